"""Full and read-only disks, for real: a small tmpfs filled to a few KiB (or remounted read-only) under every command that
writes. Each failure is one line and exit 2, leaves no temporary folder and changes nothing that was there; a zoo stopped
by a full disk resumes, once there is room, to exactly the records of an uninterrupted run. Skipped where tmpfs cannot be
mounted (not root, or a container without the capability)."""
import os, shutil, subprocess, sys, tempfile
from contextlib import contextmanager
from pathlib import Path
import numpy as np
import pytest
import yaml
import zarr
from interpgen.pipeline import DatasetGenerationPipeline
from zoo_helpers import cli, env, one_line, tiny_config, tree

CFG = {**tiny_config(16, 7), 'store': dict(chunk_records=4, shard_records=8)}


@contextmanager
def tmpfs(kib:int=2048):
    d = Path(tempfile.mkdtemp(prefix='interpgen-tmpfs-'))
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={kib}k', 'tmpfs', str(d)], capture_output=True, text=True)
    if r.returncode: d.rmdir(); pytest.skip(f'cannot mount a tmpfs here ({r.stderr.strip()[:100]})')
    try: yield d
    finally: subprocess.run(['umount', '-l', str(d)]); d.rmdir()

def fill(d:Path, leave_kib:int):
    "Fill the file system of `d` until `leave_kib` KiB are free."
    free = os.statvfs(d).f_bavail * os.statvfs(d).f_frsize
    with open(d / 'filler', 'wb') as f: f.write(b'\0' * max(0, free - leave_kib * 1024))

def read_only(d:Path): subprocess.run(['mount', '-o', 'remount,ro', str(d)], check=True)

def no_temporaries(d:Path): assert not [p.name for p in d.iterdir() if p.name.startswith('.')], list(d.iterdir())


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    "A zoo, its config, an answers file and the tiny language model as a folder, on the ordinary disk."
    d = tmp_path_factory.mktemp('work')
    DatasetGenerationPipeline(CFG).run(d / 'z.zarr', progress=False)
    (d / 'c.yaml').write_text(yaml.safe_dump(CFG))
    (d / 'answers.jsonl').write_text('{"index": 0, "completion": "palindrome"}\n')
    from interpgen import concepts as C
    lm = C.tiny_lm('llama', seed=0); lm.model.save_pretrained(d / 'lm'); lm.tokenizer.save_pretrained(d / 'lm')
    r = subprocess.run([sys.executable, '-c', 'from interpgen.concepts import interpgen_concepts_main as m, sys; sys.exit(m())', '--concept', 'France',
                        '--concepts', 'Chad,Japan', '--model', str(d / 'lm'), '--out', str(d / 'c.zarr'), '--layers', '0-1',
                        '--sites', 'mlp_in', '--dtype', 'float32', '--quiet'], capture_output=True, text=True, env=env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return d

def _concepts(out, work, *more):
    return subprocess.run([sys.executable, '-c', 'from interpgen.concepts import interpgen_concepts_main as m, sys; sys.exit(m())', '--concept', 'France',
                           '--concepts', 'Chad,Japan', '--model', str(work / 'lm'), '--out', str(out), '--layers', '0-1', '--sites', 'mlp_in',
                           '--dtype', 'float32', '--quiet', *map(str, more)], capture_output=True, text=True, env=env(), timeout=300)

def _directions(store, out):
    return subprocess.run([sys.executable, '-c', 'from interpgen.directions import interpgen_directions_main as m, sys; sys.exit(m())', str(store),
                           '--out', str(out), '--n-folds', '2', '--threads', '1', '--sites', 'mlp_in'],
                          capture_output=True, text=True, env=env(), timeout=300)

def _writers(work, d):
    "Every command that writes, with its output on the file system of `d`."
    return {
        'generate': lambda: cli('interpgen_generate', '--config', work / 'c.yaml', '--out', d / 'new.zarr', '--quiet', check=False),
        'export': lambda: cli('interpgen_export', work / 'z.zarr', '--out', d / 'prompts', '--tokenizer', 'none', '--quiet', check=False),
        'sigset': lambda: cli('interpgen_sigset', '--out', d / 's.json', '--size', '4000', check=False),
        'evaluate': lambda: cli('interpgen_evaluate', work / 'z.zarr', '--predictions', work / 'answers.jsonl', '--task', 'classification',
                                '--json_out', d / 'scores.json', '--quiet', check=False),
        'concepts': lambda: _concepts(d / 'c.zarr', work),
        'directions': lambda: _directions(work / 'c.zarr', d / 'dirs'),
    }


@pytest.mark.parametrize('cmd', ['generate', 'export', 'sigset', 'evaluate', 'concepts', 'directions'])
def test_a_full_disk_is_one_line_and_loses_nothing(work, cmd):
    with tmpfs() as d:
        (d / 'notes.txt').write_text('my notes\n'); fill(d, 0 if cmd in ('sigset', 'evaluate') else 8)   # small files fit in 8 KiB
        before = tree(d)
        one_line(_writers(work, d)[cmd](), 'error')
        no_temporaries(d)
        if cmd != 'generate': assert tree(d) == before            # a zoo may stay behind, to resume (next test)
        else: assert {k for k in before} <= set(tree(d)) and all(tree(d)[k] == v for k, v in before.items())


def test_a_zoo_stopped_by_a_full_disk_resumes_to_the_same_records(work):
    with tmpfs() as d:
        fill(d, 120)                                              # room to create the zoo, not to write its shards
        one_line(cli('interpgen_generate', '--config', work / 'c.yaml', '--out', d / 'z.zarr', '--quiet', check=False), 'no space left')
        assert (d / 'z.zarr').exists() and not (d / 'z.zarr.lock').exists()
        (d / 'filler').unlink()
        cli('interpgen_generate', '--config', work / 'c.yaml', '--out', d / 'z.zarr', '--quiet')
        want = zarr.open_group(work / 'z.zarr', mode='r')
        got = zarr.open_group(d / 'z.zarr', mode='r')
        assert list(got['hash'][:]) == list(want['hash'][:])
        assert np.array_equal(got['subject/params'][:], want['subject/params'][:], equal_nan=True)
        assert cli('interpgen_info', d / 'z.zarr', '--verify').returncode == 0


@pytest.mark.parametrize('cmd', ['generate', 'export', 'sigset', 'evaluate', 'concepts', 'directions'])
def test_a_read_only_folder_is_one_line_and_changes_nothing(work, cmd):
    with tmpfs() as d:
        (d / 'notes.txt').write_text('my notes\n'); read_only(d)
        before = tree(d)
        one_line(_writers(work, d)[cmd](), 'error')
        assert tree(d) == before


def test_stores_on_a_read_only_disk_can_be_read(work, tmp_path):
    "Reading needs no write: info --verify, export and directions from a zoo and a concept store on a read-only disk."
    with tmpfs(8192) as d:
        shutil.copytree(work / 'z.zarr', d / 'z.zarr'); shutil.copytree(work / 'c.zarr', d / 'c.zarr'); read_only(d)
        before = tree(d)
        assert 'all 16 read back whole' in cli('interpgen_info', d / 'z.zarr', '--verify').stdout
        cli('interpgen_export', d / 'z.zarr', '--out', tmp_path / 'prompts', '--tokenizer', 'none', '--quiet')
        assert (tmp_path / 'prompts').is_dir()
        r = _directions(d / 'c.zarr', tmp_path / 'dirs')
        assert r.returncode == 0, r.stderr[-2000:]
        r = subprocess.run([sys.executable, '-c', 'from interpgen.concepts import interpgen_concepts_main as m, sys; sys.exit(m())', '--check', str(d / 'c.zarr')],
                           capture_output=True, text=True, env=env(), timeout=300)
        assert r.returncode == 0 and 'all passed' in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
        assert tree(d) == before
