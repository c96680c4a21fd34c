"""Damaged and partial zoos, through the console scripts: errors that name the record and the file, a resume that rewrites
what is damaged, and "k of n records written" where a store is not finished. Read back with zarr directly, not through `Zoo`."""
import json, shutil
import numpy as np
import pytest
import yaml
import zarr
from interpgen.pipeline import DatasetGenerationPipeline
from zoo_helpers import cli, one_line, tiny_config, tree

CFG = {**tiny_config(16, 7), 'store': dict(chunk_records=4, shard_records=8)}   # 2 shards of 2 chunks


@pytest.fixture(scope='module')
def whole(tmp_path_factory):
    d = tmp_path_factory.mktemp('whole')
    DatasetGenerationPipeline(CFG).run(d / 'z.zarr', progress=False)
    (d / 'c.yaml').write_text(yaml.safe_dump(CFG))
    (d / 'answers.jsonl').write_text(''.join(json.dumps(dict(index=i, completion='palindrome')) + '\n' for i in range(16)))
    return d


def _copy(whole, tmp_path):
    shutil.copytree(whole, tmp_path, dirs_exist_ok=True); return tmp_path, tmp_path / 'z.zarr'

def _hashes(z): return list(zarr.open_group(z, mode='r')['hash'][:])

def test_the_whole_zoo_verifies(whole):
    r = cli('interpgen_info', whole / 'z.zarr', '--verify')
    assert r.returncode == 0 and '16 of 16 records written; all 16 read back whole (hashes match)' in r.stdout, r.stdout[-1000:]


@pytest.mark.parametrize('damage,record,file', [
    ('delete', 8, 'subject/params/c/2/0'),         # records 8-11 lose their weights
    ('garbage', 12, 'meta/c/3'),                   # records 12-15 get bytes that are not a chunk
    ('swap', 4, 'modified/signature/c/1/0/0'),     # a valid chunk of other records: it decodes, but the hashes differ
])
def test_damage_is_named_refused_and_rewritten(whole, tmp_path, damage, record, file):
    d, z = _copy(whole, tmp_path)
    want = _hashes(z)
    f = z / file
    if damage == 'delete': f.unlink()
    elif damage == 'garbage': f.write_bytes(b'not a zarr chunk' * 8)
    else: shutil.copyfile(z / 'modified/signature/c/0/0/0', f)
    line = one_line(cli('interpgen_info', z, '--verify', check=False))
    assert f'record {record} ' in line and 'damaged' in line and 'interpgen_generate' in line, line
    if damage == 'delete': assert file in line, line
    before = tree(d)
    line = one_line(cli('interpgen_export', z, '--out', d / 'prompts', '--tokenizer', 'none', '--quiet', check=False))
    assert f'record {record} ' in line, line
    line = one_line(cli('interpgen_evaluate', z, '--predictions', d / 'answers.jsonl', '--task', 'classification', '--quiet', check=False))
    assert f'record {record} ' in line, line
    assert tree(d) == before                                           # nothing written, nothing left behind
    r = cli('interpgen_generate', '--config', d / 'c.yaml', '--out', z, '--quiet')   # a resume finds the damage and rewrites the shard
    assert 'damaged' in r.stderr and f'shards [{record // 8}]' in r.stderr, r.stderr[-2000:]
    assert _hashes(z) == want
    assert cli('interpgen_info', z, '--verify').returncode == 0


def test_a_partial_zoo_says_k_of_n_and_works_on_the_written_part_only_when_asked(whole, tmp_path):
    d, z = _copy(whole, tmp_path)
    zarr.open_group(z, mode='r+')['shards'][1] = ''                    # what a run stopped before shard 1 finished leaves
    r = cli('interpgen_info', z, '--verify')
    assert '8 of 16 records written (run interpgen_generate' in r.stdout and 'all 8 read back whole' in r.stdout, r.stdout[-1000:]
    before = tree(d)
    line = one_line(cli('interpgen_export', z, '--out', d / 'prompts', '--tokenizer', 'none', '--quiet', check=False))
    assert '8 of 16 records written' in line and '--written_only' in line, line
    line = one_line(cli('interpgen_evaluate', z, '--predictions', d / 'answers.jsonl', '--task', 'classification', '--quiet', check=False))
    assert '8 of 16 records written' in line, line
    assert tree(d) == before
    r = cli('interpgen_export', z, '--out', d / 'prompts', '--tokenizer', 'none', '--written_only', '--quiet')
    assert 'of 8 of 16 records' in r.stdout, r.stdout[-1000:]
    rows = [json.loads(l) for p in (d / 'prompts').glob('*.jsonl') for l in p.read_text().splitlines()]
    idx = {json.loads(r['metadata'])['index'] if isinstance(r['metadata'], str) else r['metadata']['index'] for r in rows}
    assert rows and idx <= set(range(8)), sorted(idx)
    r = cli('interpgen_generate', '--config', d / 'c.yaml', '--out', z, '--quiet')         # the same command finishes it
    assert _hashes(z) == _hashes(whole / 'z.zarr') and np.all(np.array(_hashes(z)) != '')
