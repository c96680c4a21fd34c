"""The generation pipeline and its store, end to end on real Zarr stores: crash and resume, workers, bad input."""
import json, math, os, shutil, signal, subprocess, time
import numpy as np
import pytest
import yaml
import zarr
from interpgen.sampler import InterpgenError, PatternDatasetSampler
from interpgen.pipeline import (DatasetGenerationPipeline, load_config, make_candidate, build_candidate, evaluation_set,
                                DEFAULT_CONFIG_YAML, GenerationConfig)
from interpgen.store import open_zoo, record_hash
from zoo_helpers import ROOT, cli, tree, arrays, same_store, tiny_config
from independent import Space, read_zoo, fresh_measures, forward

TINY = tiny_config(48, 3)


@pytest.fixture(scope='module')
def tiny_zoo(tmp_path_factory):
    "One uninterrupted run of `TINY` on one worker."
    out = tmp_path_factory.mktemp('ref') / 'zoo.zarr'
    return DatasetGenerationPipeline(TINY).run(out, workers=1, progress=False).path


def _own_wilson_low(k, n, z=1.96):
    p = k / n; return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def test_records_hold_what_they_claim(tiny_zoo):
    "Every kept record, recomputed on its evaluation set with our own forward pass: the stored numbers, and the two-sided filter."
    zoo = open_zoo(tiny_zoo)
    assert len(zoo) == 48 and len(zoo.done_shards()) == 6 and zoo.schema.models == ('subject', 'modified')
    cfg = load_config(TINY); q, c = cfg.quality, cfg.corruption
    sd = zoo.signature_dataset; space = PatternDatasetSampler(7, 7).space
    recs = list(zoo)
    assert [r.index for r in recs] == list(range(48)) and [r.hash for r in recs] == zoo.hashes()
    for r in recs:
        assert record_hash(r) == r.hash
        ev = evaluation_set(cfg, r, sd)                                # drawn again from the record's seed; its hash checked inside
        seen = set(space.encode(r.dataset.seqs).tolist()) | set(space.encode(sd.seqs).tolist())
        assert not seen & set(space.encode(ev.seqs).tolist())          # nothing the models saw
        blocks = {p: ev.source == ev.pattern_names.index(p) for p in r.meta['patterns']}
        neg = ev.labels == 0
        assert not ev.membership[neg][:, ev.include_idx].any() and all(ev.membership[b, ev.pattern_names.index(p)].all() for p, b in blocks.items())
        own = {}
        for w in ('subject', 'modified'):
            said = forward(r.meta['arch'], r.params[w].numpy(), ev.seqs) > 0
            own[w] = dict(recall={p: said[b].mean() for p, b in blocks.items()}, neg=(~said[neg]).mean(),
                          k={p: int(said[b].sum()) for p, b in blocks.items()}, kn=int((~said[neg]).sum()))
            m = r.meta['metrics'][w]                                    # the stored claims, to float32 rounding of the logits
            for p in blocks: assert abs(own[w]['recall'][p] - m['recall'][p]) <= 2 / blocks[p].sum()
            assert abs(own[w]['neg'] - m['negative_accuracy']) <= 2 / neg.sum()
        clean, deg, t = own['modified'], own['subject'], r.meta['target']
        for p, b in blocks.items(): assert _own_wilson_low(clean['k'][p], int(b.sum())) >= q.min_recall - 0.005      # labels hold
        assert _own_wilson_low(clean['kn'], int(neg.sum())) >= q.min_negative_accuracy - 0.005
        assert clean['recall'][t] - deg['recall'][t] >= c.min_degradation_threshold - 0.005                         # a real repair
        for p in blocks:
            if p != t: assert abs(clean['recall'][p] - deg['recall'][p]) <= c.max_other_degradation + 0.005           # both ways
        assert abs(clean['neg'] - deg['neg']) <= c.max_negative_degradation + 0.005
        assert r.meta['quality']['target_gain_ci'][0] > 0
        # corruption: only train/validation positives of the target alone flipped; test labels clean
        flipped = np.flatnonzero(r.train_labels != r.dataset.labels)
        assert len(flipped) == r.meta['corruption']['flipped'] > 0
        ti = r.dataset.pattern_names.index(t); inc = r.dataset.include_idx
        assert (r.split[flipped] < 2).all() and r.dataset.membership[flipped, ti].all()
        assert (r.dataset.membership[flipped][:, inc].sum(1) == 1).all() and (r.dataset.labels[flipped] == 1).all()
    assert [x.index for x in zoo[10:14]] == [10, 11, 12, 13] and zoo[-1].index == 47
    assert zoo[7].hash == zoo[7:8][0].hash
    with pytest.raises(InterpgenError, match='index'): zoo[48]


def test_claims_hold_on_fresh_data(tiny_zoo):
    "Independent code (own patterns, own forward pass, fresh sequences none of the record's): the claims agree within sampling error."
    space = Space(); recs, probes, _ = read_zoo(tiny_zoo)
    for r in recs:
        f = fresh_measures(space, r, probes, n=400)
        for w, mine in f.items():
            m = r['meta']['metrics'][w]
            pairs = [(mine['recall'][p], m['recall'][p], mine['n'][p], m['positives'][p]) for p in mine['recall']]
            pairs.append((mine['negative_accuracy'], m['negative_accuracy'], mine['n_negatives'], m['negatives']))
            for a, b, na, nb in pairs:
                p = min(max((a + b) / 2, 0.02), 0.98)
                assert abs(a - b) <= 4.5 * math.sqrt(p * (1 - p) * (1 / na + 1 / nb)) + 0.005, (r['index'], w, a, b)


def test_evaluation_sets_are_disjoint_and_deterministic():
    cfg = load_config(TINY); sd = DatasetGenerationPipeline(TINY).signature_dataset(); space = PatternDatasetSampler(7, 7).space
    a, b = (build_candidate(cfg, make_candidate(cfg, 5, 0), sd) for _ in range(2))
    assert a.evaluation.sha256 == b.evaluation.sha256 and np.array_equal(a.evaluation.seqs, b.evaluation.seqs)
    assert build_candidate(cfg, make_candidate(cfg, 5, 1), sd).evaluation.sha256 != a.evaluation.sha256
    ev = set(space.encode(a.evaluation.seqs).tolist())
    assert not ev & set(space.encode(a.ds.seqs).tolist()) and not ev & set(space.encode(sd.seqs).tolist())
    assert a.evaluation.labels.sum() == (a.evaluation.labels == 0).sum() == 100 * len(a.cand.patterns)


def test_candidates_depend_only_on_seed_index_attempt():
    a, b = load_config(TINY), load_config(TINY, size=999)
    assert make_candidate(a, 17, 2) == make_candidate(b, 17, 2)
    assert make_candidate(a, 17, 2) != make_candidate(a, 17, 3) != make_candidate(a, 18, 2)
    assert make_candidate(a, 17, 2) != make_candidate(load_config(TINY, seed=4), 17, 2)


def test_two_workers_make_the_same_store(tiny_zoo, tmp_path):
    z2 = DatasetGenerationPipeline(TINY).run(tmp_path / 'zoo.zarr', workers=2, progress=False)
    same_store(tiny_zoo, z2.path)


def test_a_one_shard_zoo_trains_on_every_worker_and_is_the_same(tmp_path, monkeypatch):
    "With one shard to make, the shard's trainer calls use the pool: the zoo is the one a single process makes."
    from interpgen import trainer
    sent, submit = [], trainer.CountingPool.submit
    monkeypatch.setattr(trainer.CountingPool, 'submit', lambda self, fn, *a, **kw: sent.append(fn.__name__) or submit(self, fn, *a, **kw))
    c = dict(tiny_config(16, 5), store=dict(chunk_records=4, shard_records=16))
    c['training'] = dict(c['training'], models_per_batch=4)         # several batches per trainer call, so the pool has work
    one = DatasetGenerationPipeline(c); one.run(tmp_path / 'one.zarr', progress=False)
    two = DatasetGenerationPipeline(c); two.run(tmp_path / 'two.zarr', workers=2, progress=False)
    assert [r['trainer_workers'] for r in one.reports] == [1] and [r['trainer_workers'] for r in two.reports] == [2]
    assert sent.count('_run_batch') >= 4                               # the trainer's batches went to the pool
    same_store(tmp_path / 'one.zarr', tmp_path / 'two.zarr')


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
    assert r.meta['target'] is None and (r.train_labels == r.dataset.labels).all() and 'quality' not in r.meta
    assert set(zoo.info()['rejections']) <= {'clean_recall_low', 'clean_negatives_low'}     # only the label check applies
    for r in zoo: assert all(lo >= 0.7 - 1e-9 for lo, _ in r.meta['metrics']['subject']['recall_ci'].values())
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
                       (dict(tasks=['explain']), ['tasks', 'explain', 'classification']),
                       (dict(quality=dict(min_recall=1.5)), ['quality.min_recall=1.5', 'in [0, 1]']),
                       (dict(quality=dict(min_negative_accuracy=-0.1)), ['quality.min_negative_accuracy=-0.1', 'in [0, 1]']),
                       (dict(corruption=dict(max_other_degradation=2)), ['corruption.max_other_degradation=2', 'in [0, 1]']),
                       (dict(quality=dict(n_per_pattern=0)), ['quality.n_per_pattern=0', '>= 1']),
                       (dict(quality=dict(max_attempts=0)), ['quality.max_attempts=0', '>= 1']),
                       (dict(corruption=dict(max_attempts=16)), ['corruption.max_attempts', 'quality.max_attempts now'])]:
        cfg = tmp_path / 'bad.yaml'; cfg.write_text(yaml.safe_dump(bad))
        r = cli('interpgen_generate', '--config', cfg, '--out', out, check=False)
        assert r.returncode == 2 and r.stderr.count('\n') == 1, r.stderr        # one line, no traceback
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
        with pytest.raises(InterpgenError, match='a zoo made by interpgen'): p.run(tmp_path / 'notes', overwrite=overwrite, progress=False)
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
    passed, n = info['candidates'] - info['rejected'], info['candidates']       # candidates are independent draws
    bound = (1 - _own_wilson_low(passed, n)) ** load_config(TINY).quality.max_attempts
    assert 0 < info['failure_bound'] < 1e-6 and math.isclose(info['failure_bound'], bound, rel_tol=2e-3)
    r = cli('interpgen_info', tiny_zoo)
    assert 'rejection_rate' in r.stdout and 'subject.acc' in r.stdout


def test_a_record_that_cannot_pass_is_reported_then_a_higher_cap_makes_only_it(tmp_path):
    "With a cap of one candidate some records fail: the others are written, the run exits 2 naming them; a higher cap finishes them."
    c = dict(tiny_config(16, 7), quality=dict(tiny_config(16, 7)['quality'], max_attempts=1))
    cfg = tmp_path / 'c.yaml'; cfg.write_text(yaml.safe_dump(c)); out = tmp_path / 'z.zarr'
    r = cli('interpgen_generate', '--config', cfg, '--out', out, '--quiet', check=False)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'were not made: none of their 1 candidates passed' in r.stderr, r.stderr
    zoo = open_zoo(out); failed = zoo.failed_records()
    assert 0 < len(failed) < 16 and all(f['attempts'] == 1 and sum(f['reasons'].values()) == 1 for f in failed.values())
    assert str(sorted(failed)[:10]) in r.stderr and '--max_attempts 2' in r.stderr
    made = [i for i in range(16) if i not in failed]
    assert [zoo[i].index for i in made] == made and all(zoo.verify(i) for i in made)
    with pytest.raises(InterpgenError, match='was not made'): zoo[min(failed)]
    before = tree(out)                                                # the same cap again: nothing new to try, nothing touched
    assert cli('interpgen_generate', '--config', cfg, '--out', out, '--quiet', check=False).returncode == 2 and tree(out) == before
    hashes = zoo.hashes()
    r = cli('interpgen_generate', '--config', cfg, '--out', out, '--quiet', '--max_attempts', '256')
    zoo = open_zoo(out)
    assert zoo.failed_records() == {} and len(zoo.done_shards()) == 2
    assert [h for i, h in enumerate(zoo.hashes()) if i in made] == [h for i, h in enumerate(hashes) if i in made]   # only the failed were made
    assert all(zoo[i].meta['attempt'] >= 1 for i in failed)
    fresh = DatasetGenerationPipeline(c, max_attempts=256).run(tmp_path / 'fresh.zarr', progress=False)
    same_store(out, fresh.path)                                       # the same zoo a run with the higher cap makes from scratch
