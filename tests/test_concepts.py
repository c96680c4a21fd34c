"""Tests of `interpgen.concepts` (notebook 06): real model, command line, interrupted runs, tampered stores, bad input."""
import json, os, shutil, subprocess, sys, textwrap, warnings
from pathlib import Path

import numpy as np, pytest, torch, zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from interpgen import concepts as C  # noqa: E402
from interpgen.sampler import InterpgenError  # noqa: E402

ENV = os.environ | {'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), 'HF_HUB_OFFLINE': '1'}


# ---------- fixtures ----------

@pytest.fixture(scope='module')
def concepts_llama(): return C.tiny_lm('llama', seed=0)

@pytest.fixture(scope='module')
def concepts_gpt2(): return C.tiny_lm('gpt2', seed=0)

@pytest.fixture(scope='module')
def concepts_smol():
    "The real SmolLM2-135M-Instruct (converted from GGUF into the cache on first use)."
    return C.load_lm()

@pytest.fixture(scope='module')
def concepts_tiny_dir(tmp_path_factory, concepts_llama):
    "The tiny Llama saved as a local model folder, for the command line."
    d = tmp_path_factory.mktemp('tiny_model')
    concepts_llama.model.save_pretrained(d); concepts_llama.tokenizer.save_pretrained(d)
    return d

def _cfg(**kw):
    return C.ConceptConfig(**(dict(concept='France', controls=['United States', 'Chad', 'Japan', 'South Africa'],
                                   sites=('resid_pre', 'mlp_in', 'attn_out'), batch_size=3, dtype='float32', chunk_rows=8) | kw))

def _acts(path, sites): return {s: C.open_store(path)[f'acts/{s}'][:] for s in sites}

def _cli(tmp_path, *args, entry='interpgen_concepts_main'):
    "Run the command line as a console script would (a tiny script calling the entry point)."
    script = tmp_path/f'{entry}.py'
    script.write_text(f"import sys\nfrom interpgen.concepts import {entry}\nsys.exit({entry}())\n")
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)


# ---------- sites and positions ----------

@pytest.mark.parametrize('family', ['llama', 'gpt2'])
def test_sites_map_to_hidden_states(family):
    lm = C.tiny_lm(family, seed=3, n_layers=4)
    ids = torch.tensor([lm.tokenizer("What language do they speak in United States?")['input_ids']])
    T, L = ids.shape[1], lm.n_layers
    with C.Capture(lm.model, list(C.SITES)) as cap:
        a = cap.run(ids, torch.ones_like(ids), torch.arange(T)[None], [0]*T, list(range(T)))
    hs = lm.model(ids, output_hidden_states=True).hidden_states
    for l in range(L): torch.testing.assert_close(a['resid_pre'][:, l], hs[l][0], rtol=0, atol=1e-6)
    for l in range(L - 1): torch.testing.assert_close(a['resid_post'][:, l], hs[l + 1][0], rtol=0, atol=1e-6)
    norm = lm.model.model.norm if family == 'llama' else lm.model.transformer.ln_f
    torch.testing.assert_close(norm(a['resid_post'][:, L - 1]), hs[L][0], rtol=0, atol=1e-5)
    assert a['mlp_hidden'].shape[-1] == (96 if family == 'llama' else 128)


def test_layer_subset_stops_early_and_matches(concepts_llama):
    lm = concepts_llama
    ids = torch.tensor([lm.tokenizer("What is the capital of France?")['input_ids']])
    T = ids.shape[1]
    args = (ids, torch.ones_like(ids), torch.arange(T)[None], [0]*T, list(range(T)))
    with C.Capture(lm.model, ['mlp_in', 'resid_post']) as cap: full = cap.run(*args)
    calls = []
    h = C.find_blocks(lm.model)[2].register_forward_pre_hook(lambda *a: calls.append(1))
    with C.Capture(lm.model, ['mlp_in', 'resid_post'], [1, 0]) as cap: sub = cap.run(*args)
    h.remove()
    assert calls == []  # block 2 never ran
    for s in full: assert torch.equal(sub[s], full[s][:, [1, 0]])


def test_positions_multi_token_and_leading_space(concepts_llama):
    tok = concepts_llama.tokenizer
    q = C.make_questions(['United States'], ["Name a famous landmark in {concept}."])[0]
    e = C.encode_question(tok, q)
    concept = [p for p, r, *_ in e.rows if r == 0]
    assert len(concept) >= 2 and concept == list(range(concept[0], concept[-1] + 1))
    assert tok.decode([e.ids[p] for p in concept]).strip() == 'United States'
    assert [q.text[s:en] for p, r, s, en in e.rows if r == 1] == ['.']
    assert [p for p, r, *_ in e.rows if r == 2] == [len(e.ids) - 1]
    assert 0 not in [p for p, *_ in e.rows]   # the added <s> is never stored
    # only the stored roles are returned
    assert {r for _, r, *_ in C.encode_question(tok, q, ('last',)).rows} == {2}
    # a lone space token before the concept is not a concept token; a leading-space token is
    for c, pieces in [('France', ['Fr', 'an', 'ce']), ('Niger', ['ĠNiger'])]:
        e = C.encode_question(tok, C.make_questions([c], ["What is the capital of {concept}?"])[0])
        assert tok.convert_ids_to_tokens([e.ids[p] for p, r, *_ in e.rows if r == 0]) == pieces


def test_is_target_from_concept_id_not_text():
    qs = C.make_questions(['Niger', 'Nigeria'])
    assert [q.is_target for q in qs] == [True]*5 + [False]*5


# ---------- batching ----------

@pytest.mark.parametrize('family', ['llama', 'gpt2'])
@pytest.mark.parametrize('side', ['right', 'left'])
def test_batched_equals_single(family, side):
    lm = C.tiny_lm(family, seed=1)
    qs = C.make_questions(['France', 'United States', 'South Africa', 'Chad'])
    assert C.max_batch_diff(lm, qs, padding_side=side) < 1e-4


def test_store_with_left_padding_equals_right(tmp_path, concepts_gpt2):
    a = C.collect_concepts(concepts_gpt2, _cfg(padding_side='right'), tmp_path/'r.zarr', progress=False)
    b = C.collect_concepts(concepts_gpt2, _cfg(padding_side='left'), tmp_path/'l.zarr', progress=False)
    ra, rb = C.load_rows(a), C.load_rows(b)
    for k in ('question_id', 'position', 'role', 'token_id'): assert np.array_equal(ra[k], rb[k])
    for s, x in _acts(a, _cfg().sites).items(): np.testing.assert_allclose(_acts(b, [s])[s], x, rtol=0, atol=1e-4)
    n_tok = C.open_store(a)['questions/n_tokens'][:]
    assert (ra['position'] < n_tok[ra['question_id']]).all()  # never a pad position


# ---------- the store ----------

def test_store_rows_equal_direct_forward(tmp_path, concepts_llama):
    lm, cfg = concepts_llama, _cfg()
    path = C.collect_concepts(lm, cfg, tmp_path/'s.zarr', progress=False)
    g, rows = C.open_store(path), C.load_rows(path)
    info = g.attrs['interpgen']
    assert info['complete'] and info['rows_done'] == info['n_rows'] == len(rows['position'])
    assert g['acts/mlp_in'].shape == (len(rows['position']), lm.n_layers, 32)
    assert g['acts/mlp_in'].dtype == np.float32
    assert list(g['concepts'][:]) == ['France', *cfg.controls] and info['related'] == {'source': 'user'}
    prov = info['provenance']
    assert prov['model'] == 'tiny-llama' and prov['padding_side'] == 'right' and prov['store_dtype'] == 'float32'
    assert len(prov['tokenizer_sha256']) == 64 and len(prov['config_sha256']) == 64 and prov['versions']['zarr'] == zarr.__version__
    texts = g['questions/text'][:]
    for i in range(0, len(rows['position']), 7):
        q = int(rows['question_id'][i])
        e = C.Encoded(lm.tokenizer(texts[q])['input_ids'], [(int(rows['position'][i]), int(rows['role'][i]), 0, 0)])
        assert e.ids[e.rows[0][0]] == rows['token_id'][i]
        ref = C.collect_batch(lm, [e], cfg.sites)
        for s in cfg.sites: np.testing.assert_allclose(g[f'acts/{s}'][i], ref[s][0].numpy(), rtol=0, atol=1e-5)
    assert C.check_store(path).ok


def test_float16_store_close_to_float32(tmp_path, concepts_llama):
    a = C.collect_concepts(concepts_llama, _cfg(), tmp_path/'f32.zarr', progress=False)
    b = C.collect_concepts(concepts_llama, _cfg(dtype='float16'), tmp_path/'f16.zarr', progress=False)
    x, y = C.load_acts(a, 'mlp_in', 1), C.load_acts(b, 'mlp_in', 1)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype('float32'), x, rtol=2e-3, atol=1e-3)


def test_resume_after_stop_equals_uninterrupted(tmp_path, concepts_llama):
    cfg = _cfg()
    full = C.collect_concepts(concepts_llama, cfg, tmp_path/'full.zarr', progress=False)
    part = C.collect_concepts(concepts_llama, cfg, tmp_path/'part.zarr', progress=False, max_batches=3)
    info = C.open_store(part).attrs['interpgen']
    assert not info['complete'] and 0 < info['rows_done'] < info['n_rows']
    assert not C.check_store(part).ok and 'complete' in C.check_store(part).failed
    C.collect_concepts(concepts_llama, cfg, part, progress=False)
    for s, x in _acts(full, cfg.sites).items(): assert np.array_equal(_acts(part, [s])[s], x)
    assert C.check_store(part).ok


def test_resume_after_crash_equals_uninterrupted(tmp_path, concepts_llama, monkeypatch):
    "A crash mid-run loses the unflushed buffer; the resumed store still equals an uninterrupted one."
    cfg = _cfg(chunk_rows=16)
    full = C.collect_concepts(concepts_llama, cfg, tmp_path/'full.zarr', progress=False)
    real, calls = C.collect_batch, []
    def crashing(*a, **kw):
        calls.append(1)
        if len(calls) > 4: raise KeyboardInterrupt('simulated crash')
        return real(*a, **kw)
    monkeypatch.setattr(C, 'collect_batch', crashing)
    with pytest.raises(KeyboardInterrupt): C.collect_concepts(concepts_llama, cfg, tmp_path/'crash.zarr', progress=False)
    monkeypatch.setattr(C, 'collect_batch', real)
    info = C.open_store(tmp_path/'crash.zarr').attrs['interpgen']
    assert not info['complete'] and info['rows_done'] % 16 == 0 and info['rows_done'] < info['n_rows']
    assert not (tmp_path/'crash.zarr.lock').exists()
    C.collect_concepts(concepts_llama, cfg, tmp_path/'crash.zarr', progress=False)
    for s, x in _acts(full, cfg.sites).items(): assert np.array_equal(_acts(tmp_path/'crash.zarr', [s])[s], x)


def test_store_refuses_other_collection_and_overwrites(tmp_path, concepts_llama):
    p = C.collect_concepts(concepts_llama, _cfg(), tmp_path/'s.zarr', progress=False)
    with pytest.raises(ValueError, match='holds a different collection'):
        C.collect_concepts(concepts_llama, _cfg(concept='Spain'), p, progress=False)
    C.collect_concepts(concepts_llama, _cfg(concept='Spain'), p, progress=False, overwrite=True)
    assert C.open_store(p)['concepts'][0] == 'Spain'
    (tmp_path/'junk').mkdir(); (tmp_path/'junk'/'x').write_text('x')
    with pytest.raises(ValueError, match='not an interpgen concept store'):
        C.collect_concepts(concepts_llama, _cfg(), tmp_path/'junk', progress=False)


def test_live_lock_blocks_second_writer(tmp_path, concepts_llama):
    (tmp_path/'s.zarr.lock').write_text(str(os.getpid()))  # a live process (this one) holds it
    with pytest.raises(InterpgenError, match='being written by process'):
        C.collect_concepts(concepts_llama, _cfg(), tmp_path/'s.zarr', progress=False)
    (tmp_path/'s.zarr.lock').write_text('999999999')          # a dead process: taken over
    C.collect_concepts(concepts_llama, _cfg(), tmp_path/'s.zarr', progress=False)
    assert not (tmp_path/'s.zarr.lock').exists()


def test_streaming_buffer_stays_bounded(tmp_path, concepts_llama, monkeypatch):
    "Rows are written shard by shard: no write is larger than one shard plus one batch, so memory does not grow with questions."
    sizes, real = [], zarr.Array.__setitem__
    def spy(self, key, value):
        if str(self.path).startswith('acts/'): sizes.append(len(value))
        return real(self, key, value)
    monkeypatch.setattr(zarr.Array, '__setitem__', spy)
    cfg = _cfg(controls=list(C.TINY_COUNTRIES[1:]), chunk_rows=8, batch_size=2)
    p = C.collect_concepts(concepts_llama, cfg, tmp_path/'s.zarr', progress=False)
    monkeypatch.setattr(zarr.Array, '__setitem__', real)
    n = C.open_store(p).attrs['interpgen']['n_rows']
    assert sum(sizes) == n * len(cfg.sites) and max(sizes) <= 8 + 2 * 10


# ---------- validation ----------

@pytest.fixture
def concepts_store(tmp_path, concepts_llama):
    return C.collect_concepts(concepts_llama, _cfg(), tmp_path/'ok.zarr', progress=False)

def _tamper(src, dst, fn):
    shutil.copytree(src, dst)
    fn(zarr.open_group(str(dst), mode='r+', zarr_format=3))
    return C.check_store(dst)

def test_check_passes_and_reports(concepts_store):
    r = C.check_store(concepts_store)
    assert r.ok and [n for n, *_ in r.results] == ['complete', 'shapes', 'tokens', 'balance', 'coverage', 'integrity', 'finite']
    assert 'target: 5 questions' in str(r)


def test_check_fails_off_by_one_positions(tmp_path, concepts_store):
    def f(g): g['rows/position'][:] = g['rows/position'][:] + 1
    r = _tamper(concepts_store, tmp_path/'t.zarr', f)
    assert r.failed == ['tokens'] and 'differ from its tokenization' in str(r)


def test_check_fails_wrong_token_id(tmp_path, concepts_store):
    def f(g): t = g['rows/token_id'][:]; t[3] += 1; g['rows/token_id'][:] = t
    assert _tamper(concepts_store, tmp_path/'t.zarr', f).failed == ['tokens']


def test_check_fails_shapes_balance_coverage_finite(tmp_path, concepts_store):
    assert 'shapes' in _tamper(concepts_store, tmp_path/'a.zarr', lambda g: g['acts/mlp_in'].resize((5, 3, 32))).failed
    def drop_question(g): c = g['questions/concept_id'][:]; c[7] = 0; g['questions/concept_id'][:] = c
    assert 'balance' in _tamper(concepts_store, tmp_path/'b.zarr', drop_question).failed
    def no_template_0(g): t = g['rows/template_id'][:]; t[t == 0] = 1; g['rows/template_id'][:] = t
    r = _tamper(concepts_store, tmp_path/'c.zarr', no_template_0)
    assert 'coverage' in r.failed and 'missing rows: template 0' in str(r)
    def nan(g): a = g['acts/attn_out'][:5]; a[2, 1, 3] = np.nan; g['acts/attn_out'][:5] = a
    assert _tamper(concepts_store, tmp_path/'d.zarr', nan).failed == ['integrity', 'finite']   # the changed block no longer matches its hash either
    assert C.check_store(tmp_path/'missing.zarr').failed == ['layout']


# ---------- config and bad input ----------

@pytest.mark.parametrize('kw,msg', [
    (dict(sites=['resid_mid']), "sites=['resid_mid'] is not allowed: give distinct values from resid_pre, resid_post, mlp_in, mlp_hidden, attn_out"),
    (dict(layers=[0, 3]), "layers=[0, 3] is not allowed: distinct layer numbers from 0 to 2"),
    (dict(templates=['What is {country}?']), "templates[0]='What is {country}?' is not allowed: every template must contain the placeholder {concept}"),
    (dict(templates=['Tell me about {concept}']), "no text follows the last {concept}"),
    (dict(controls=['Chad', 'France']), "without the target concept"),
    (dict(roles=['first']), "roles=['first'] is not allowed"),
    (dict(batch_size=0), "batch_size=0 is not allowed: an integer >= 1"),
    (dict(padding_side='middle'), "padding_side='middle' is not allowed: 'right' or 'left'"),
])
def test_bad_config(tmp_path, concepts_llama, kw, msg):
    with pytest.raises(ValueError) as e: C.collect_concepts(concepts_llama, _cfg(**kw), tmp_path/'x.zarr', progress=False)
    assert msg in str(e.value)
    assert not (tmp_path/'x.zarr').exists()  # failed before any work


def test_parse_concepts():
    ans = "1. China (China)\n2) germany\n- Italy: Rome\n* United States (USA)\n4. Japan-France\n5. Germany and France\n" \
          "Population size\n6. united  states\nEUROPHENIA\nHere are more\n7. Spain.\n8. The answer is that there are many countries\n" \
          "9. Shelter from the sun\n10. Bosnia and Herzegovina\n11. Republic of the Congo\n12. 1234\n13. São Tomé"
    assert C.parse_concepts(ans, exclude=['France'], prompt=C.RELATED_PROMPT) == ['China', 'Italy', 'United States', 'Spain', 'Republic of the Congo', 'São Tomé']
    assert C.parse_concepts("Spain\nspain\n SPAIN ", exclude=['France']) == ['Spain']


def test_related_concepts_seeded_and_honest(concepts_llama):
    lm = concepts_llama
    lm.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    state = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match=r'found \d+ of 4 concepts related to'):
        a = C.related_concepts(lm, 'France', n=4, rounds=2, max_new_tokens=6)
    assert torch.equal(state, torch.random.get_rng_state())  # global random state untouched
    with pytest.warns(UserWarning): b = C.related_concepts(lm, 'France', n=4, rounds=2, max_new_tokens=6)
    assert a.answers == b.answers and not a.complete and len(a.answers) == 2
    with pytest.warns(UserWarning): c = C.related_concepts(lm, 'France', n=4, rounds=2, max_new_tokens=6, seed=1)
    assert c.answers != a.answers


# ---------- command line (tiny model saved as a local folder) ----------

def test_cli_collect_check_and_errors(tmp_path, concepts_tiny_dir):
    "The console entry point: collect, check, a tampered store (exit 1) and bad input (exit 2), each as its own process."
    out = tmp_path/'c.zarr'
    r = _cli(tmp_path, '--concept', 'France', '--concepts', 'United States,Chad', '--model', concepts_tiny_dir, '--out', out,
             '--layers', '0-1', '--batch-size', '4', '--sites', 'mlp_in,mlp_hidden', '--dtype', 'float32', '--quiet')
    assert r.returncode == 0, r.stderr
    assert 'all passed' in r.stdout
    g = C.open_store(out)
    assert g['acts/mlp_hidden'].shape[1:] == (2, 96) and list(g['layers'][:]) == [0, 1] and list(g['concepts'][:]) == ['France', 'United States', 'Chad']
    # the same command in another process finds the same collection (stable hashes) and leaves the finished store alone
    assert C.run_cli(C.interpgen_concepts, ['--concept', 'France', '--concepts', 'United States,Chad', '--model', str(concepts_tiny_dir), '--out', str(out),
                                            '--layers', '0-1', '--batch-size', '4', '--sites', 'mlp_in,mlp_hidden', '--dtype', 'float32', '--quiet']) == 0
    assert _cli(tmp_path, '--check', out, entry='interpgen_concepts').returncode == 0  # the plain call_parse entry point works too
    g = zarr.open_group(str(out), mode='r+', zarr_format=3); g['rows/position'][:] = g['rows/position'][:] + 1
    r = _cli(tmp_path, '--check', out)
    assert r.returncode == 1 and 'FAIL  tokens' in r.stdout
    r = _cli(tmp_path, '--concept', 'France', '--model', concepts_tiny_dir, '--out', tmp_path/'bad.zarr', '--layers', '0-5')
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert "layers='0-5' is not allowed: distinct layer numbers from 0 to 2 (the model has 3 layers)" in r.stderr
    assert not (tmp_path/'bad.zarr').exists()


@pytest.mark.parametrize('args,msg', [
    (['--sites', 'mlp_in,resid_mid'], "sites=['mlp_in', 'resid_mid'] is not allowed: give distinct values from resid_pre, resid_post, mlp_in, mlp_hidden, attn_out"),
    (['--layers', '-1'], "layers='-1' is not allowed"),
    (['--templates', 'What is {country}?'], "templates[0]='What is {country}?' is not allowed: every template must contain the placeholder {concept}"),
    (['--dtype', 'int8'], "dtype='int8' is not allowed: 'float16' or 'float32'"),
    (['--batch-size', '0'], "batch_size=0 is not allowed: an integer >= 1"),
    (['--concept', ''], "concept='' is not allowed"),
    (['--concepts', 'Chad,france'], "--concepts: controls=['Chad', 'france'] is not allowed: distinct non-empty names (ignoring case and spaces), without the target concept"),
    (['--model', 'no-such/model'], "model='no-such/model' is not allowed: it is not a built-in name (smollm2-135m-instruct), a local model folder, or a hub id in the local Hugging Face cache"),
])
def test_cli_bad_input(tmp_path, concepts_tiny_dir, capsys, args, msg):
    base = ['--concept', 'France', '--concepts', 'Chad', '--model', str(concepts_tiny_dir), '--out', str(tmp_path/'bad.zarr')]
    assert C.run_cli(C.interpgen_concepts, base + args) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path/'bad.zarr').exists()


def test_cli_templates_file_and_resume(tmp_path, concepts_tiny_dir, capsys):
    (tmp_path/'t.txt').write_text("Where is {concept}?\nIs {concept}, in your view, big?\n")
    args = ['--concept', 'France', '--concepts', 'Chad,Japan', '--model', str(concepts_tiny_dir), '--out', str(tmp_path/'t.zarr'),
            '--templates', str(tmp_path/'t.txt'), '--quiet', '--roles', 'concept,last']
    assert C.run_cli(C.interpgen_concepts, args) == 0
    g = C.open_store(tmp_path/'t.zarr')
    assert list(g['templates'][:]) == ["Where is {concept}?", "Is {concept}, in your view, big?"]
    assert set(C.load_rows(tmp_path/'t.zarr')['role_name']) == {'concept', 'last'}
    assert C.run_cli(C.interpgen_concepts, args) == 0   # a finished store is left as it is
    assert C.run_cli(C.interpgen_concepts, [*args[:8], '--templates', 'Is {concept} big?|Where is {concept}?', '--quiet']) == 2
    assert 'holds a different collection' in capsys.readouterr().err


# ---------- the real model ----------

def test_smollm2_loads_from_cache(concepts_smol):
    lm = concepts_smol
    assert type(lm.model).__name__ == 'LlamaForCausalLM' and lm.n_layers == 30 and lm.model.config.hidden_size == 576
    assert lm.revision.startswith('gguf-sha256:') and (C.cache_dir('models', C.DEFAULT_MODEL)/'model.safetensors').exists()


def test_smollm2_positions(concepts_smol):
    tok = concepts_smol.tokenizer
    rows = C.show_rows(tok, C.make_questions(['France'], ["What is the capital of {concept}?"])[0])
    assert [(r, t, s) for _, r, t, s in rows] == [('concept', 'ĠFrance', ' France'), ('after_concept', '?', '?'), ('last', '?', '?')]
    rows = C.show_rows(tok, C.make_questions(['United States'], ["What is the largest city in {concept}?"])[0])
    assert [t for _, r, t, _ in rows if r == 'concept'] == ['ĠUnited', 'ĠStates']


def test_smollm2_batched_equals_single(concepts_smol):
    "float32: equal up to rounding relative to each site's scale; float64: equal within 1e-4 absolute (the batching itself is exact)."
    qs = C.make_questions(['France', 'United States'], C.DEFAULT_TEMPLATES[:3])
    for side in ('right', 'left'):
        assert C.max_batch_diff(concepts_smol, qs, padding_side=side, relative=True) < 1e-4
    lm64 = C.load_lm(dtype='float64')
    for side in ('right', 'left'): assert C.max_batch_diff(lm64, qs, padding_side=side) < 1e-4


def test_smollm2_related_concepts(concepts_smol):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        rel = C.related_concepts(concepts_smol, 'France', n=5, rounds=3)
    keys = [C.concept_key(c) for c in rel.concepts]
    assert 0 < len(rel.concepts) <= 5 and len(set(keys)) == len(keys) and 'france' not in keys
    assert all(c[0].isupper() and len(c.split()) <= 4 for c in rel.concepts)


def test_cli_default_model_offline(tmp_path, concepts_smol):
    "The issue's command, offline, with the related concepts asked of SmolLM2 (a few, to keep it short)."
    out = tmp_path/'concepts.zarr'
    r = _cli(tmp_path, '--concept', 'France', '--out', out, '--n-concepts', '3', '--layers', '0,15,29', '--quiet')
    assert r.returncode == 0, r.stderr
    g = C.open_store(out)
    info = g.attrs['interpgen']
    assert info['complete'] and info['related']['source'] == 'model' and g['concepts'][0] == 'France'
    assert info['provenance']['model'] == C.DEFAULT_MODEL and info['provenance']['revision'].startswith('gguf-sha256:')
    assert g['acts/resid_post'].shape[1:] == (3, 576) and g['acts/resid_post'].dtype == np.float16
    assert 'all passed' in r.stdout, r.stdout


# ---------- damaged, partial and shared stores, through the console scripts ----------

def _directions(tmp_path, store, *args):
    script = tmp_path/'directions_cli.py'
    script.write_text("import sys\nfrom interpgen.directions import interpgen_directions_main\nsys.exit(interpgen_directions_main())\n")
    return subprocess.run([sys.executable, str(script), str(store), '--out', str(tmp_path/'dirs'), '--n-folds', '2', '--threads', '1', *args],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)

def _only_line(r, code=2):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1 and 'Traceback' not in r.stderr, (r.returncode, r.stderr[-3000:])
    return lines[0]

def test_damaged_partial_and_busy_stores_are_one_line(tmp_path, concepts_llama, concepts_tiny_dir):
    whole = C.collect_concepts(concepts_llama, _cfg(), tmp_path/'whole.zarr', progress=False)
    bad = tmp_path/'deleted.zarr'; shutil.copytree(whole, bad)
    (bad/'acts/mlp_in/c/1/0/0').unlink()                               # one shard file: rows 8..15 at every layer
    r = _cli(tmp_path, '--check', bad)
    assert r.returncode == 1 and 'FAIL  integrity' in r.stdout, r.stdout[-2000:]
    line = _only_line(_directions(tmp_path, bad, '--sites', 'mlp_in'))
    assert 'acts/mlp_in/c/1/0/0' in line and 'damaged' in line, line
    assert not (tmp_path/'dirs').exists()
    part = C.collect_concepts(concepts_llama, _cfg(), tmp_path/'part.zarr', progress=False, max_batches=2)
    g = C.open_store(part); n = g.attrs['interpgen']['n_rows']
    line = _only_line(_directions(tmp_path, part, '--sites', 'mlp_in'))
    assert f"of {n} rows written" in line and 'interpgen_concepts' in line, line
    assert not (tmp_path/'dirs').exists()
    (tmp_path/'busy.zarr.lock').write_text(str(os.getpid()))          # a live process (this one) is writing it
    line = _only_line(_cli(tmp_path, '--concept', 'France', '--concepts', 'Chad', '--model', concepts_tiny_dir, '--out', tmp_path/'busy.zarr', '--quiet'))
    assert 'is being written by process' in line, line
    assert not (tmp_path/'busy.zarr').exists()
