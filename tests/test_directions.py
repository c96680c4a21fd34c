"""Tests of `interpgen.directions` (notebook 07): methods, held-out folds, export, steering hooks, command line, a real model."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np, pytest, torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from interpgen import concepts as C  # noqa: E402
from interpgen import directions as D  # noqa: E402

torch.set_num_threads(1)  # two threads on a busy 2-core machine are 10-50x slower
ENV = os.environ | {'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), 'HF_HUB_OFFLINE': '1'}
CONTROLS = ['Germany', 'Italy', 'Spain', 'Japan', 'United States', 'Brazil']


@pytest.fixture(scope='module')
def llama(): return C.tiny_lm('llama', seed=0)

@pytest.fixture(scope='module')
def gpt2(): return C.tiny_lm('gpt2', seed=1)

def _store(lm, path, **kw):
    cfg = C.ConceptConfig(**(dict(concept='France', controls=CONTROLS, sites=('resid_post', 'mlp_in'), dtype='float32') | kw))
    return C.collect_concepts(lm, cfg, path, progress=False)

@pytest.fixture(scope='module')
def llama_store(tmp_path_factory, llama): return _store(llama, tmp_path_factory.mktemp('s')/'llama.zarr')

@pytest.fixture(scope='module')
def gpt2_store(tmp_path_factory, gpt2): return _store(gpt2, tmp_path_factory.mktemp('s')/'gpt2.zarr', sites=('resid_pre', 'attn_out'))


# ---------- methods ----------

def _synthetic(seed=0, n=240, d=24, shift=3.0):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=d); true /= np.linalg.norm(true)
    y = np.arange(n) < n // 6
    return rng.normal(size=(n, d)).astype(np.float32) + shift * np.outer(y, true).astype(np.float32), y, np.arange(n) % 6, true

@pytest.mark.parametrize('method', list(D.METHODS))
def test_methods_recover_direction_with_fixed_sign(method):
    X, y, key, true = _synthetic()
    v = D.fit_direction(X, y, key, method)
    assert abs(np.linalg.norm(v) - 1) < 1e-5
    assert v @ true > (0.8 if method == 'probe' else 0.9)  # the probe's weights fit the noise more
    assert (X[y] @ v).mean() > (X[~y] @ v).mean()
    np.testing.assert_allclose(D.fit_direction(-X, y, key, method), -v, atol=1e-5)  # sign follows the data
    np.testing.assert_array_equal(D.fit_direction(X, y, key, method), v)  # deterministic

def test_pca_needs_pairs():
    X, y, key, _ = _synthetic()
    with pytest.raises(ValueError, match='pca needs target and control rows with the same pair key'):
        D.fit_direction(X, y, np.where(y, 100, key), 'pca')

def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(3)
    s, y = rng.integers(0, 5, 60).astype(float), rng.random(60) < 0.3
    pos, neg = s[y], s[~y]
    want = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert abs(D.auroc(s, y) - want) < 1e-12


# ---------- folds ----------

def test_folds_hold_out_templates_and_controls(llama_store):
    rows = D.select_rows(llama_store)
    for seed in (0, 1):
        folds = D.heldout_folds(rows, 3, seed)
        for tr, te in folds:
            assert not set(rows.template_id[tr]) & set(rows.template_id[te])
            assert set(rows.concept_id[tr]) & set(rows.concept_id[te]) == {0}
            assert rows.is_target[te].any() and (~rows.is_target[te]).any()
        assert set(rows.template_id[np.any([te for _, te in folds], 0)]) == set(range(5))
    with pytest.raises(ValueError, match='n_folds=1 is not allowed'): D.heldout_folds(rows, 1)


# ---------- fit_directions on two architectures ----------

@pytest.mark.parametrize('which', ['llama_store', 'gpt2_store'])
def test_fit_directions_table_and_reproducibility(which, request):
    path = request.getfixturevalue(which)
    res = D.fit_directions(path, n_folds=3, seed=0)
    sites = list(C.open_store(path).attrs['interpgen']['site_dims'])
    assert len(res.table) == len(sites) * 3 * len(D.METHODS)
    for s in sites:
        for m in D.METHODS:
            for l, v in res.directions[s][m].items(): assert abs(np.linalg.norm(v) - 1) < 1e-5
    assert all(0 <= r['acc'] <= 1 and 0 <= r['auroc'] <= 1 for r in res.table)
    assert D.fit_directions(path, n_folds=3, seed=0).table == res.table
    md = D.results_markdown(res)
    assert md.count('\n| ') == len(sites) * 3 and 'Best by held-out AUROC' in md

def test_bad_input_names_argument(llama_store):
    with pytest.raises(ValueError, match=r"sites=\['attn_out'\] is not allowed"): D.fit_directions(llama_store, sites=['attn_out'])
    with pytest.raises(ValueError, match=r"methods=\('svm',\) is not allowed"): D.fit_directions(llama_store, methods=('svm',))
    with pytest.raises(ValueError, match='layers=\\[7\\] is not allowed'): D.fit_directions(llama_store, layers=[7])
    with pytest.raises(ValueError, match="role='first' is not allowed"): D.fit_directions(llama_store, role='first')


# ---------- export ----------

def test_safetensors_roundtrip(tmp_path, llama_store):
    res = D.fit_directions(llama_store, methods=('mean_diff', 'probe'), n_folds=3)
    paths = D.save_directions(res, tmp_path)
    assert len(paths) == 4
    vecs, meta = D.load_directions(tmp_path/'mlp_in.probe.safetensors')
    assert list(vecs) == [0, 1, 2]
    np.testing.assert_array_equal(vecs[2].numpy(), res.directions['mlp_in']['probe'][2])
    assert meta['format'] == 'interpgen.directions/1' and meta['concept'] == 'France' and meta['controls'] == CONTROLS
    assert meta['provenance']['model'] == 'tiny-llama' and meta['collection_sha256'] == C.open_store(llama_store).attrs['interpgen']['collection_sha256']
    assert set(meta['scores']['1']) == {'acc', 'acc_std', 'auroc', 'auroc_std'}


# ---------- steering hooks ----------

@pytest.mark.parametrize('family', ['llama', 'gpt2'])
def test_add_direction_resid_pre_equals_previous_resid_post(family, request):
    "Adding v to the input of block l is the same as adding it to the output of block l-1; hooks are removed after."
    lm = request.getfixturevalue(family)
    ids = torch.tensor([lm.tokenizer('What is the capital of France?').input_ids])
    v = torch.randn(32, generator=torch.Generator().manual_seed(0))
    def logits(): return lm.model(input_ids=ids).logits
    with torch.inference_mode():
        clean = logits()
        with D.add_direction(lm.model, 'resid_pre', 2, v): a = logits()
        with D.add_direction(lm.model, 'resid_post', 1, v): b = logits()
        with D.add_direction(lm.model, 'attn_out', 1, v): c = logits()
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert (a - clean).abs().max() > 1e-3 and (c - clean).abs().max() > 1e-3
        torch.testing.assert_close(logits(), clean, atol=0, rtol=0)
    with pytest.raises(ValueError, match="site='mlp_out' is not allowed"): D.add_direction(lm.model, 'mlp_out', 0, v).__enter__()


# ---------- causal check ----------

def test_causal_effect_seeded_and_zero_alpha(llama, llama_store):
    c = D.causal_effect(llama, llama_store, 'resid_post', 1, 'mean_diff', n_folds=3, n_random=4)
    assert c == D.causal_effect(llama, llama_store, 'resid_post', 1, 'mean_diff', n_folds=3, n_random=4)
    assert c['n_prompts'] == 5 and c['token'].strip() and c['norm'] > 0
    z = D.causal_effect(llama, llama_store, 'resid_post', 1, 'mean_diff', alpha=0.0, n_folds=3, n_random=4)
    assert abs(z['delta_logp']) < 1e-5 and abs(z['random_delta_logp']) < 1e-5


# ---------- command line ----------

def _cli(tmp_path, *args):
    script = tmp_path/'cli.py'
    script.write_text("import sys\nfrom interpgen.directions import interpgen_directions_main\nsys.exit(interpgen_directions_main())\n")
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)

def test_cli_writes_everything_with_causal_check(tmp_path, llama, llama_store):
    mdir = tmp_path/'model'; llama.model.save_pretrained(mdir); llama.tokenizer.save_pretrained(mdir)
    r = _cli(tmp_path, llama_store, '--out', tmp_path/'out', '--n-folds', '3', '--methods', 'mean_diff,pca', '--sites', 'mlp_in',
             '--model', mdir, '--n-random', '2', '--threads', '1')
    assert r.returncode == 0, r.stderr
    out = tmp_path/'out'
    assert {p.name for p in out.iterdir()} == {'accuracy.png', 'auroc.png', 'projection.png', 'norms.png', 'results.json', 'results.md', 'directions'}
    assert {p.name for p in (out/'directions').iterdir()} == {'mlp_in.mean_diff.safetensors', 'mlp_in.pca.safetensors'}
    res = json.loads((out/'results.json').read_text())
    assert len(res['table']) == 3 * 2 and [c['method'] for c in res['causal']] == ['mean_diff', 'pca']
    assert 'Causal check, mean_diff' in (out/'results.md').read_text()
    assert (out/'accuracy.png').read_bytes()[:4] == b'\x89PNG'
    um = os.umask(0); os.umask(um)                                  # every file and folder with the umask's mode (not 0600/0700)
    assert {oct(p.stat().st_mode & 0o777) for p in out.rglob('*') if p.is_file()} == {oct(0o666 & ~um)}
    assert {oct(p.stat().st_mode & 0o777) for p in [out, *out.rglob('*')] if p.is_dir()} == {oct(0o777 & ~um)}

def test_cli_bad_input(tmp_path, llama_store):
    r = _cli(tmp_path, llama_store, '--methods', 'mean_diff,svm')
    assert r.returncode == 2 and "methods=['mean_diff', 'svm'] is not allowed" in r.stderr
    r = _cli(tmp_path, tmp_path/'nothing.zarr')
    assert r.returncode == 2 and 'is not allowed: it is not a Zarr concept store' in r.stderr


# ---------- the real model ----------

def test_smollm2_france_direction_is_found_and_causal(tmp_path):
    "SmolLM2 on France vs 4 countries x 5 templates at layer 15: held-out AUROC high; adding the direction lowers log p(' France') less than random ones (a weak check: on this small store the effect is small)."
    lm = C.load_lm()
    path = _store(lm, tmp_path/'smol.zarr', controls=['Germany', 'Italy', 'Spain', 'Japan'], sites=('resid_post',), layers=(15,))
    res = D.fit_directions(path, methods=('mean_diff', 'probe'), n_folds=4)
    assert max(r['auroc'] for r in res.table) > 0.8, res.table
    c = D.causal_effect(lm, path, 'resid_post', 15, 'mean_diff', alpha=0.5, n_folds=4, n_random=4)
    assert c['token'] == ' France' and c['n_prompts'] == 5
    assert c['delta_logp'] > c['random_delta_logp'], c
