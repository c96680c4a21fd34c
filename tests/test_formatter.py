"""Prompts, completions, parsing, export and scoring on real zoos on disk, through the console scripts."""
import json
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from interpgen.sampler import InterpgenError
from interpgen.trainer import SubjectArch, init_params
from interpgen.pipeline import DatasetGenerationPipeline
from interpgen.store import open_zoo
from interpgen.formatter import (TrainingDataFormatter, NumberFormat, parse_patterns, count_tokens, record_split,
                                 evaluate_predictions, zoo_candidates, SPLITS)
from zoo_helpers import cli, tiny_config

TINY = tiny_config(24, 5)


@pytest.fixture(scope='module')
def zoo_path(tmp_path_factory):
    return DatasetGenerationPipeline(TINY).run(tmp_path_factory.mktemp('fmt') / 'zoo.zarr', progress=False).path


@pytest.fixture(scope='module')
def zoo(zoo_path): return open_zoo(zoo_path)


FORMATTERS = [TrainingDataFormatter(), TrainingDataFormatter(style='interwoven', compact=True),
              TrainingDataFormatter(number_format='fixed', precision=4, signature_columns=('mean',)),
              TrainingDataFormatter(precision=0)]


@pytest.mark.parametrize('f', FORMATTERS, ids=['default', 'interwoven-compact', 'fixed4-mean', 'precision0'])
def test_round_trip_every_record(zoo, f):
    "Completion and prompt weights parse back to exactly the grid values, and the parsed model runs like the grid model."
    for rec in zoo:
        np.testing.assert_array_equal(f.parse_weights(f.completion(rec, 'modification'), rec.arch), f.numbers.grid(rec.params['modified']))
        np.testing.assert_array_equal(f.parse_weights(f.prompt(rec, 'modification'), rec.arch), f.numbers.grid(rec.params['subject']))
        m = f.parse_model(f.completion(rec, 'modification'), rec.arch)
        g = replace(rec, params={'modified': f.numbers.grid(rec.params['modified'])}).model('modified')
        np.testing.assert_array_equal(m.predict(rec.dataset.seqs), g.predict(rec.dataset.seqs))


def test_prompt_content(zoo):
    rec, f = zoo[0], TrainingDataFormatter(style='interwoven')
    p = f.prompt(rec, 'modification')
    t = rec.meta['target']
    lines = p.splitlines()
    assert any(l.startswith(f'- {t}: ') for l in lines) and sum(l.startswith('[layer ') for l in lines) == len(rec.arch.hidden) + 1
    assert lines.count('signature:') == len(rec.arch.hidden) + 1
    c = f.prompt(rec, 'classification', zoo_candidates(zoo))
    assert all(f'- {n}: ' in c for n in zoo_candidates(zoo))
    assert f.completion(rec, 'classification', zoo_candidates(zoo)) == ', '.join(n for n in zoo_candidates(zoo) if n in rec.meta['patterns'])
    # no signature: no signature section at all, in either style
    bare = replace(rec, signatures={})
    for style in ('separate', 'interwoven'):
        assert 'signature' not in TrainingDataFormatter(style=style).prompt(bare, 'modification').lower()


def test_layers_in_numeric_order_beyond_ten():
    "Eleven hidden layers: headers 0..11 in numeric order (not layer_10 before layer_2), and an exact round trip."
    arch = SubjectArch((3,) * 11, encoding='index')
    flat = init_params(arch, seed=1).numpy()
    f = TrainingDataFormatter()
    text = f.weights_block(arch, flat)
    heads = [int(l.split()[1].rstrip(':')) for l in text.splitlines() if l.startswith('[layer')]
    assert heads == list(range(12))
    np.testing.assert_array_equal(f.parse_weights(text, arch), f.numbers.grid(flat))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_damaged_text_never_parses_silently(data):
    "Deleting a line or a number anywhere inside the weights, or breaking a header, raises an error naming a line."
    arch = SubjectArch((4, 3), encoding='index')
    f = TrainingDataFormatter(compact=data.draw(st.booleans()))
    lines = f.weights_block(arch, init_params(arch, seed=data.draw(st.integers(0, 99))).numpy()).splitlines()
    k = data.draw(st.integers(0, len(lines) - 1))
    how = data.draw(st.sampled_from(['drop line', 'drop number', 'header']))
    if how == 'drop line': lines.pop(k)
    elif how == 'header' or lines[k].startswith('['):
        k = data.draw(st.sampled_from([i for i, l in enumerate(lines) if l.startswith('[')]))
        lines[k] = lines[k].replace('->', '=>')
    else: lines[k] = lines[k].replace(lines[k].split('|')[0].split()[-1] + ' |', '|', 1)
    with pytest.raises(InterpgenError, match=r'line \d+|text ended'): f.parse_weights('\n'.join(lines), arch)


def test_number_format_errors():
    with pytest.raises(InterpgenError, match='precision=9 is not allowed'): NumberFormat('scaled', 9)
    with pytest.raises(InterpgenError, match="line 2: '0.5' is not a number"): NumberFormat('scaled', 3).parse(['1', '0.5'], 'line 2')
    with pytest.raises(InterpgenError, match='values'): NumberFormat().format([np.inf])
    with pytest.raises(InterpgenError, match="not candidate patterns"): parse_patterns('palindrome, bogus', ['palindrome'])


def test_token_counts_use_the_real_tokenizer():
    "SmolLM2 splits digits one by one: the counts follow."
    assert count_tokens(['123', '123456', '-42 7']).tolist() == [3, 6, 5]


def _read_jsonl(path): return [json.loads(l) for l in Path(path).read_text().splitlines()]


def test_export_formats_load_with_datasets(zoo_path, tmp_path):
    import datasets
    datasets.disable_progress_bars()
    for fmt in ('jsonl', 'parquet', 'hf'):
        cli('interpgen_export', zoo_path, '--out', tmp_path / fmt, '--format', fmt, '--quiet')
    j = datasets.load_dataset('json', data_files={s: str(tmp_path / 'jsonl' / f'{s}.jsonl') for s in SPLITS})
    p = datasets.load_dataset('parquet', data_files={s: str(tmp_path / 'parquet' / f'{s}.parquet') for s in SPLITS})
    h = datasets.load_from_disk(str(tmp_path / 'hf'))
    for d in (j, p, h):
        assert sum(len(d[s]) for s in SPLITS) == 24 and d['train'].column_names == ['prompt', 'completion', 'metadata']
        assert [json.loads(m)['index'] for m in d['test']['metadata']] == [json.loads(m)['index'] for m in h['test']['metadata']]
        assert d['train']['prompt'] == h['train']['prompt']
    zoo = open_zoo(zoo_path)
    for s in SPLITS:
        for m in h[s]['metadata']:
            m = json.loads(m)
            assert m['split'] == s == record_split(m['index'], m['patterns']) and m['hash'] == zoo.hashes()[m['index']]
    info = json.loads((tmp_path / 'jsonl' / 'export_info.json').read_text())
    assert info['counts'] == {s: len(h[s]) for s in SPLITS} and info['tokens']['prompt']['max'] > info['tokens']['prompt']['min'] > 0
    # deterministic: the same command writes the same bytes
    cli('interpgen_export', zoo_path, '--out', tmp_path / 'again', '--quiet')
    for s in SPLITS: assert (tmp_path / 'again' / f'{s}.jsonl').read_bytes() == (tmp_path / 'jsonl' / f'{s}.jsonl').read_bytes()


def test_holdout_patterns_and_budget(zoo_path, zoo, tmp_path):
    counts = {n: sum(n in r.meta['patterns'] for r in zoo) for n in zoo_candidates(zoo)}
    held = max(counts, key=counts.get)
    r = cli('interpgen_export', zoo_path, '--out', tmp_path / 'h', '--task', 'classification', '--holdout_patterns', held, '--quiet')
    for s in SPLITS:
        ms = [json.loads(x['metadata']) for x in _read_jsonl(tmp_path / 'h' / f'{s}.jsonl')]
        assert all((held in m['patterns']) == (s == 'test') for m in ms if s != 'test') and (s != 'test' or sum(held in m['patterns'] for m in ms) == counts[held])
    totals = sorted(m['prompt_tokens'] + m['completion_tokens'] for s in SPLITS
                    for m in (json.loads(x['metadata']) for x in _read_jsonl(tmp_path / 'h' / f'{s}.jsonl')))
    budget = totals[len(totals) // 2]
    r = cli('interpgen_export', zoo_path, '--out', tmp_path / 'b', '--task', 'classification', '--max_tokens', budget, '--quiet')
    kept = [json.loads(x['metadata']) for s in SPLITS for x in _read_jsonl(tmp_path / 'b' / f'{s}.jsonl')]
    assert len(kept) == sum(t <= budget for t in totals) and all(m['prompt_tokens'] + m['completion_tokens'] <= budget for m in kept)
    assert f"{sum(t > budget for t in totals)} over the budget of {budget} tokens dropped" in r.stdout


def test_evaluate_reference_perfect_echo_zero(zoo_path, zoo, tmp_path):
    cli('interpgen_export', zoo_path, '--out', tmp_path / 'm', '--quiet')
    cli('interpgen_export', zoo_path, '--out', tmp_path / 'c', '--task', 'classification', '--quiet')
    allm = tmp_path / 'all_m.jsonl'
    allm.write_text(''.join((tmp_path / 'm' / f'{s}.jsonl').read_text() for s in SPLITS))
    cli('interpgen_evaluate', zoo_path, '--predictions', allm, '--json_out', tmp_path / 's.json', '--quiet')
    s = json.loads((tmp_path / 's.json').read_text())
    assert s['n'] == 24 and s['parse_rate'] == 1.0 and s['recovered'] == 1.0
    assert all(r['gain'] == r['reference_gain'] for r in s['records'])
    f = TrainingDataFormatter()
    echo = tmp_path / 'echo.jsonl'
    echo.write_text(''.join(json.dumps(dict(index=r.index, completion=f.weights_block(r.arch, r.params['subject']))) + '\n' for r in zoo))
    cli('interpgen_evaluate', zoo_path, '--predictions', echo, '--json_out', tmp_path / 'e.json', '--quiet')
    e = json.loads((tmp_path / 'e.json').read_text())
    assert e['parse_rate'] == 1.0 and {r['gain'] for r in e['records']} == {0.0} and e['repaired_rate'] == 0.0
    allc = tmp_path / 'all_c.jsonl'
    allc.write_text(''.join((tmp_path / 'c' / f'{s}.jsonl').read_text() for s in SPLITS))
    out = cli('interpgen_evaluate', zoo_path, '--task', 'classification', '--predictions', allc).stdout
    assert 'exact_match=1.000' in out and 'jaccard=1.000' in out
    # a wrong classifier: everything named -> recall 1, exact match only where a record has every pattern (none here)
    wrong = evaluate_predictions(zoo, 'classification', {r.index: ', '.join(zoo_candidates(zoo)) for r in zoo})
    assert wrong['exact_match'] == 0.0 and all(v['recall'] in (1.0, None) for v in wrong['per_pattern'].values())


def test_evaluate_bad_input(zoo_path, tmp_path):
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"index": 0, "completion": "x"}\nnot json\n')
    r = cli('interpgen_evaluate', zoo_path, '--predictions', bad, check=False)
    assert r.returncode == 2 and 'line 2: not JSON' in r.stderr
    bad.write_text('{"index": 999, "completion": "x"}\n')
    r = cli('interpgen_evaluate', zoo_path, '--predictions', bad, check=False)
    assert r.returncode == 2 and 'record indices of this zoo (0..23)' in r.stderr
    bad.write_text('{"index": 0, "completion": "[layer 0: 49 -> 2]\\nn0: 1 2"}\n')
    s = evaluate_predictions(zoo_path, 'modification', bad)
    assert s['parse_rate'] == 0.0 and 'line 1: expected the header' in s['records'][0]['error']
    r = cli('interpgen_export', zoo_path, '--out', tmp_path / 'x', '--format', 'csv', check=False)
    assert r.returncode == 2 and "format='csv' is not allowed" in r.stderr and not (tmp_path / 'x').exists()


def test_classification_only_zoo(tmp_path):
    path = DatasetGenerationPipeline({**TINY, 'size': 8, 'tasks': ['classification']}).run(tmp_path / 'c.zarr', progress=False).path
    zoo = open_zoo(path)
    f = TrainingDataFormatter()
    assert f.completion(zoo[0], 'classification', zoo_candidates(zoo))
    with pytest.raises(InterpgenError, match='has no modified model'): f.prompt(zoo[0], 'modification')
    r = cli('interpgen_export', path, '--out', tmp_path / 'm', check=False)
    assert r.returncode == 2 and 'no modified model' in r.stderr and not (tmp_path / 'm').exists()
