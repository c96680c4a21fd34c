"""The generation pipeline and its store, end to end on real Zarr stores: crash and resume, workers, bad input."""
import json, os, shutil, signal, subprocess, time
import numpy as np
import pytest
import yaml
import zarr
from interpgen.sampler import InterpgenError
from interpgen.pipeline import DatasetGenerationPipeline, load_config, make_candidate, DEFAULT_CONFIG_YAML, GenerationConfig
from interpgen.store import open_zoo, record_hash
from zoo_helpers import ROOT, cli, tree, arrays, same_store, tiny_config

TINY = tiny_config(48, 3)


@pytest.fixture(scope='module')
def tiny_zoo(tmp_path_factory):
    "One uninterrupted run of `TINY` on one worker."
    out = tmp_path_factory.mktemp('ref') / 'zoo.zarr'
    return DatasetGenerationPipeline(TINY).run(out, workers=1, progress=False).path


def test_records_hold_what_they_claim(tiny_zoo):
    zoo = open_zoo(tiny_zoo)
    assert len(zoo) == 48 and len(zoo.done_shards()) == 6 and zoo.schema.models == ('subject', 'modified')
    cfg = load_config(TINY)
    recs = list(zoo)
    assert [r.index for r in recs] == list(range(48)) and [r.hash for r in recs] == zoo.hashes()
    for r in recs:
        assert record_hash(r) == r.hash
        q, m = r.meta['quality'], r.meta['metrics']
        # the filter, recomputed from the stored clean-test metrics
        gain = m['modified']['per_pattern'][r.meta['target']] - m['subject']['per_pattern'][r.meta['target']]
        assert gain >= cfg.corruption.min_degradation_threshold - 1e-9 and abs(gain - q['target_gain']) < 1e-6
        assert q['worst_other_change'] <= cfg.corruption.max_other_degradation + 1e-9
        # corruption: only train/validation positives of the target alone flipped; test labels clean
        flipped = np.flatnonzero(r.train_labels != r.dataset.labels)
        assert len(flipped) == r.meta['corruption']['flipped'] > 0
        t = r.dataset.pattern_names.index(r.meta['target']); inc = r.dataset.include_idx
        assert (r.split[flipped] < 2).all() and r.dataset.membership[flipped, t].all()
        assert (r.dataset.membership[flipped][:, inc].sum(1) == 1).all() and (r.dataset.labels[flipped] == 1).all()
    # a stored model reproduces its stored test accuracy on its stored test split
    r = zoo[5]
    for which in ('subject', 'modified'):
        model = zoo.model(5, which); te = r.split == 2
        acc = (model.predict(r.dataset.seqs[te]) == r.dataset.labels[te]).mean()
        assert abs(acc - r.meta['metrics'][which]['acc']) < 1e-9
    assert [x.index for x in zoo[10:14]] == [10, 11, 12, 13] and zoo[-1].index == 47
    assert zoo[7].hash == zoo[7:8][0].hash
    with pytest.raises(InterpgenError, match='index'): zoo[48]


def test_candidates_depend_only_on_seed_index_attempt():
    a, b = load_config(TINY), load_config(TINY, size=999)
    assert make_candidate(a, 17, 2) == make_candidate(b, 17, 2)
    assert make_candidate(a, 17, 2) != make_candidate(a, 17, 3) != make_candidate(a, 18, 2)
    assert make_candidate(a, 17, 2) != make_candidate(load_config(TINY, seed=4), 17, 2)


def test_two_workers_make_the_same_store(tiny_zoo, tmp_path):
    z2 = DatasetGenerationPipeline(TINY).run(tmp_path / 'zoo.zarr', workers=2, progress=False)
    same_store(tiny_zoo, z2.path)


def test_kill_9_then_resume_equals_uninterrupted(tiny_zoo, tmp_path):
    cfg = tmp_path / 'tiny.yaml'; cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / 'zoo.zarr'
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    p = subprocess.Popen([shutil.which('interpgen_generate'), '--config', str(cfg), '--out', str(out), '--workers', '2', '--quiet'],
                         env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done, t0 = [], time.time()
    while time.time() - t0 < 300 and p.poll() is None:     # wait for the first finished shard, then kill the whole group
        try: done = [s for s in zarr.open_group(out, mode='r')['shards'][:].tolist() if s]
        except Exception: done = []
        if done: os.killpg(p.pid, signal.SIGKILL); break
        time.sleep(0.02)
    p.wait()
    assert p.returncode == -signal.SIGKILL, p.stderr.read()
    zoo = open_zoo(out)
    n_done = len(zoo.done_shards())
    assert 1 <= n_done < zoo.schema.n_shards            # really interrupted: some shards written, some not
    missing = next(s for s in range(zoo.schema.n_shards) if s not in zoo.done_shards())
    with pytest.raises(InterpgenError, match='not written yet'): zoo[zoo.schema.shard_range(missing).start]
    r = cli('interpgen_generate', '--config', cfg, '--out', out, '--workers', '2', '--quiet')
    assert '48 records' in r.stdout
    same_store(tiny_zoo, out)


def test_classification_only_and_finetune(tmp_path):
    c = dict(TINY, size=8, tasks=['classification'])
    zoo = DatasetGenerationPipeline(c).run(tmp_path / 'c.zarr', progress=False)
    assert zoo.schema.models == ('subject',) and 'modified/params' not in arrays(zoo.path)
    r = zoo[0]
    assert r.meta['target'] is None and (r.train_labels == r.dataset.labels).all() and zoo.info()['rejected'] == 0
    f = dict(TINY, size=8, modified_model=dict(mode='finetune', finetune_epochs=3))
    zf = DatasetGenerationPipeline(f).run(tmp_path / 'f.zarr', progress=False)
    for r in zf:
        assert r.meta['modified_mode'] == 'finetune' and r.meta['history']['modified']['epochs'] <= 3
        assert r.meta['quality']['target_gain'] >= 0.05 - 1e-9


def test_bad_config_fails_before_any_work(tmp_path):
    out = tmp_path / 'zoo.zarr'
    for bad, words in [(dict(model=dict(layers=[3, 1])), ['model.layers', '[3, 1]', 'min <= max']),
                       (dict(model=dict(activation='relu')), ['model.activation', 'model.activations']),
                       (dict(dataset=dict(patterns=['palindrome', 'nope'])), ['dataset.patterns', 'nope', 'sorted_ascending']),
                       (dict(dataset=dict(patterns=['all_same', 'palindrome', 'no_repeats'])), ['dataset.patterns', 'all_same', 'if_short']),
                       (dict(store=dict(chunk_records=8, shard_records=12)), ['store.shard_records', '12', 'multiple']),
                       (dict(tasks=['explain']), ['tasks', 'explain', 'classification'])]:
        cfg = tmp_path / 'bad.yaml'; cfg.write_text(yaml.safe_dump(bad))
        r = cli('interpgen_generate', '--config', cfg, '--out', out, check=False)
        assert r.returncode == 2, r.stderr
        for w in words: assert w in r.stderr, (w, r.stderr)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith('.zoo')]


def test_secrets_are_refused_and_never_echoed(tmp_path):
    cfg = tmp_path / 'secret.yaml'; cfg.write_text(yaml.safe_dump(dict(TINY, hub=dict(hf_token='hf_SuperSecret123'))))
    r = cli('interpgen_generate', '--config', cfg, '--out', tmp_path / 'zoo.zarr', check=False)
    assert r.returncode == 2 and 'hub.hf_token' in r.stderr and 'secret' in r.stderr
    assert 'hf_SuperSecret123' not in r.stderr + r.stdout and not (tmp_path / 'zoo.zarr').exists()


def test_mismatched_store_is_refused_untouched_then_overwritten(tiny_zoo, tmp_path):
    out = tmp_path / 'zoo.zarr'; shutil.copytree(tiny_zoo, out)
    before = tree(out)
    other = DatasetGenerationPipeline(dict(TINY, seed=4))
    with pytest.raises(InterpgenError, match='another config'): other.run(out, progress=False)
    assert tree(out) == before
    zoo = other.run(out, overwrite=True, progress=False)
    assert zoo.attrs['config_hash'] == other.config.hash and zoo.hashes() != open_zoo(tiny_zoo).hashes()
    # the same config again: nothing left to do, nothing rewritten
    before = tree(out); other.run(out, progress=False); assert tree(out) == before


def test_output_folder_problems(tmp_path):
    p = DatasetGenerationPipeline(dict(TINY, size=8))
    with pytest.raises(InterpgenError, match='does not exist'): p.run(tmp_path / 'missing' / 'zoo.zarr', progress=False)
    with pytest.raises(InterpgenError, match='cannot be written'): p.run('/sys/zoo.zarr', progress=False)   # a read-only file system
    (tmp_path / 'notes').mkdir(); (tmp_path / 'notes' / 'a.txt').write_text('mine')
    for overwrite in (False, True):
        with pytest.raises(InterpgenError, match='not an interpgen zoo'): p.run(tmp_path / 'notes', overwrite=overwrite, progress=False)
    assert (tmp_path / 'notes' / 'a.txt').read_text() == 'mine'
    with pytest.raises(InterpgenError, match='an existing zoo'): open_zoo(tmp_path / 'nothing.zarr')


def test_default_config_is_the_documented_yaml():
    assert load_config(yaml.safe_load(DEFAULT_CONFIG_YAML)) == GenerationConfig() == load_config()
    assert cli('interpgen_generate', '--print_config').stdout == DEFAULT_CONFIG_YAML


def test_info_cli(tiny_zoo):
    r = cli('interpgen_info', tiny_zoo, '--json_out')
    info = json.loads(r.stdout)
    assert info['written'] == 48 and info['config_hash'] == load_config(TINY).hash
    assert sum(info['targets'].values()) == 48 and info['candidates'] == 48 + info['rejected'] + info['unused']
    r = cli('interpgen_info', tiny_zoo)
    assert 'rejection_rate' in r.stdout and 'subject.acc' in r.stdout
