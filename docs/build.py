"""Build the interpgen docs site offline: nbdev's notebook processing, then Sphinx + MyST-NB, then the check.

    python docs/build.py              # -> _site/index.html (and _site_build/ for the processed sources)
    python docs/build.py --out /tmp/site --jobs 1

Where Quarto exists `nbdev_docs` still builds nbdev's own site; this script needs no Quarto and no network.
Steps: (1) every notebook in `nbs/` (globbed, so new chapters appear by themselves) goes through nbdev's own
processors (`nbdev.processors.FilterDefaults`, as `nbdev_proc_nbs` does): hidden and exported cells dropped,
`show_doc` cells added and rendered; (2) the processed notebooks are adapted for MyST-NB: nbdev's front matter
becomes the page title, Quarto cell options become MyST-NB tags, nbdev's doc links point into this site; (3) one
API page per module lists every name in its `__all__`; (4) Sphinx writes the HTML; (5) `docs/check.py` checks it.
"""
import argparse, ast, os, re, shutil, subprocess, sys, time, warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

def _setup_path():
    "Make `interpgen` import from this checkout, in this process and in the ones it starts."
    if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
    pp = os.environ.get('PYTHONPATH', '')
    if str(ROOT) not in pp.split(os.pathsep): os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), pp]))
    os.chdir(ROOT)

# ---------------------------------------------------------------------------------------------------------------
# 1. nbdev's processing

def page_name(nb: Path) -> str:
    "The page nbdev's Quarto site gives notebook `nb` (`00_sampler.ipynb` -> `sampler`), so links match that site."
    from nbdev.doclinks import _nbpath2html
    return _nbpath2html(Path(nb)).stem

def find_notebooks() -> list:
    "Every notebook nbdev would document, `index` first, then in file-name order (`04_` before `04a_` before `05_`)."
    from nbdev.config import get_config
    from nbdev.doclinks import nbglob
    cfg = get_config()
    nbs = [Path(p) for p in nbglob(cfg.nbs_path, func=Path)]
    nbs = [p for p in nbs if p.suffix == '.ipynb']
    return sorted(nbs, key=lambda p: (page_name(p) != 'index', p.name))

def _imports_only(cell):
    "The import statements of `cell`'s source, without the rest of its code."
    try: tree = ast.parse(cell.source)
    except SyntaxError: return ''
    return '\n'.join(ast.get_source_segment(cell.source, n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))

def _lenient_filter():
    "nbdev's `FilterDefaults` whose `exec_show_docs` runs only the imports of a cell that mixes imports and other code."
    from nbdev.processors import FilterDefaults, exec_show_docs, _do_eval
    class exec_show_docs_imports(exec_show_docs):
        def __call__(self, cell):
            if not getattr(self.nb, 'has_docs_', None) or not hasattr(self, 'k'): return
            if not _do_eval(cell): return
            if cell.directives_.keys() & {'export', 'exports', 'exporti', 'exec_doc'} or 'show_doc' in cell.source:
                return super().__call__(cell)
            imports = _imports_only(cell)
            if imports: self.k.run_cell(imports)
    class LenientFilter(FilterDefaults):
        def base_procs(self):
            return [exec_show_docs_imports if p is exec_show_docs else p for p in super().base_procs()]
    return LenientFilter

def process_notebook(src, dst):
    "Run nbdev's docs processors on notebook `src`, writing `dst`; returns a warning, or None."
    warnings.filterwarnings('ignore', 'Found cells containing imports')
    os.environ['IN_TEST'] = '1'   # as nbdev's own processing sets it: notebooks may skip work under it
    from execnb.nbio import read_nb, write_nb
    from nbdev.processors import FilterDefaults
    msg = None
    try:
        nb = read_nb(src); FilterDefaults()(nb)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        cause = f' ({type(e.__cause__).__name__}: {e.__cause__})' if e.__cause__ else ''
        msg = (f"{Path(src).name}: nbdev's processing failed: {first}{cause}. nbdev_docs would fail here too; "
               "nbdev executes cells that contain imports, so put imports in cells of their own (nbdev FAQ). "
               "Built it running only those cells' imports.")
        nb = read_nb(src); _lenient_filter()()(nb)
    write_nb(nb, dst)
    return msg

def process_all(nbs, dest: Path, jobs: int):
    "Process every notebook in `nbs` into `dest/<page>.ipynb`, `jobs` at a time, each in a fresh Python process."
    from concurrent.futures import ThreadPoolExecutor
    dest.mkdir(parents=True, exist_ok=True)
    def run(p):
        r = subprocess.run([sys.executable, __file__, '--process', str(p), str(dest / f'{page_name(p)}.ipynb')],
                           capture_output=True, text=True)
        if r.returncode: raise SystemExit(f"docs: processing {p} failed:\n{r.stdout}{r.stderr}")
        return r.stdout.strip()
    with ThreadPoolExecutor(max(1, jobs)) as ex: return [m for m in ex.map(run, nbs) if m]

# ---------------------------------------------------------------------------------------------------------------
# 2. Adapting nbdev's output for MyST-NB

_re_directive = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')
_re_source = re.compile(r'^\[source\]\((\S+?)\)\{[^}\n]*\}\s*$', re.M)
_re_sd_head = re.compile(r'^(#{2,4}) (\S+)\s*$', re.M)

def cell_tags(src: str):
    "Quarto cell options at the top of `src` -> (MyST-NB tags, the source without them)."
    lines, tags = src.splitlines(), []
    while lines and (m := _re_directive.match(lines[0])):
        k, v = m.group(1), m.group(2).strip().strip('"\'').lower()
        if k == 'echo' and v == 'false': tags.append('remove-input')
        elif k == 'output' and v == 'false': tags.append('remove-output')
        elif k == 'include' and v == 'false': tags.append('remove-cell')
        elif k == 'code-fold' and v in ('true', 'show'): tags.append('hide-input')
        lines.pop(0)
    return tags, '\n'.join(lines)

class Linker:
    "Point nbdev's doc links (`doc_host` + `doc_baseurl` + `page.html#name`) at this site's pages."
    def __init__(self, pages, anchors):
        from nbdev.config import get_config
        cfg = get_config()
        self.base = (cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/') + '/').replace('//', '/').replace(':/', '://')
        self.pages, self.anchors = set(pages), anchors   # anchors: page -> show_doc anchors on it
        self.re = re.compile(re.escape(self.base) + r'([\w.-]+)\.html(#[\w.-]*)?')
    def __call__(self, text: str, prefix: str = '') -> str:
        def sub(m):
            page, frag = m.group(1), m.group(2) or ''
            if page not in self.pages: return m.group(0)
            if frag and frag[1:] not in self.anchors.get(page, ()): frag = ''
            return f'{prefix}{page}.html{frag}'
        return self.re.sub(sub, text)

def local_nb_links(text: str, pages: dict, prefix: str = '') -> str:
    "Markdown links to notebooks (`00_sampler.ipynb`) -> their pages (`sampler.html`)."
    return re.sub(r'\]\((?:\./)?([\w.-]+)\.ipynb(#[\w.-]*)?\)',
                  lambda m: f'](' + prefix + pages.get(m.group(1), m.group(1)) + '.html' + (m.group(2) or '') + ')', text)

def showdoc_md(md: str, anchor_prefix: str = '', level: str = None):
    "Rewrite one `show_doc` markdown for MyST: an anchor before the heading, the source link as plain HTML."
    md = _re_source.sub(lambda m: f'<a class="sd-source" href="{m.group(1)}">source</a>', md)
    md = re.sub(r'\A\s*---\s*\n', '', md)      # the rule above each entry: CSS draws it (a transition can't sit in an output)
    names = []
    def head(m):
        names.append(m.group(2))
        hashes = level or m.group(1)
        return f'<div class="sd-anchor" id="{anchor_prefix}{m.group(2).lower() if not anchor_prefix else m.group(2)}"></div>\n\n{hashes} {m.group(2)}'
    return _re_sd_head.sub(head, md, count=1), names

def _src(x): return ''.join(x) if isinstance(x, list) else (x or '')

def sd_anchors(nb) -> set:
    "The anchors nbdev's links use for the `show_doc` entries of processed notebook `nb`."
    res = set()
    for c in nb['cells']:
        for o in c.get('outputs', []):
            md = o.get('data', {}).get('text/markdown')
            if md and (m := _re_sd_head.search(_src(md))): res.add(m.group(2).lower())
    return res

def adapt_notebook(nb: dict, pages: dict, link, toctree: str = '') -> dict:
    "Make nbdev-processed notebook `nb` into what MyST-NB renders well."
    import yaml
    cells, title, desc = [], None, None
    for c in nb['cells']:
        src = _src(c.get('source'))
        if c['cell_type'] == 'raw' and src.startswith('---'):
            fm = yaml.safe_load(src.strip().strip('-')) or {}
            title, desc = fm.get('title'), fm.get('description')
            continue
        if c['cell_type'] == 'markdown':
            if src.strip().startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'): continue
            c['source'] = local_nb_links(link(src), pages)
        elif c['cell_type'] == 'code':
            tags, src = cell_tags(src)
            c['source'] = src
            if tags: c.setdefault('metadata', {})['tags'] = sorted(set(c.get('metadata', {}).get('tags', []) + tags))
            for o in c.get('outputs', []):
                d = o.get('data', {})
                if 'text/markdown' in d:
                    md = link(_src(d['text/markdown']))
                    if _re_source.search(md) or _re_sd_head.search(md): md = showdoc_md(md)[0]
                    d['text/markdown'] = md
            if not src.strip() and not c.get('outputs'): continue
        cells.append(c)
    head = []
    if title: head.append(f'# {title}')
    if desc: head.append('{.lead}\n' + ' '.join(str(desc).split()))
    if head: cells.insert(0, {'cell_type': 'markdown', 'metadata': {}, 'source': '\n\n'.join(head)})
    if toctree: cells.append({'cell_type': 'markdown', 'metadata': {}, 'source': toctree})
    keep = {'code': {'cell_type', 'execution_count', 'id', 'metadata', 'outputs', 'source'},
            'markdown': {'cell_type', 'id', 'metadata', 'source', 'attachments'}, 'raw': {'cell_type', 'id', 'metadata', 'source'}}
    nb['cells'] = [{k: v for k, v in c.items() if k in keep[c['cell_type']]} for c in cells]   # nbdev's own marks (`has_sd`) out
    md = nb.setdefault('metadata', {})
    md.pop('widgets', None); md.pop('jupytext', None)
    md['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    md['language_info'] = {'name': 'python'}
    return nb

# ---------------------------------------------------------------------------------------------------------------
# 3. API pages

def module_all(path: Path) -> list:
    "The names in `__all__` of module file `path`, read without importing it."
    for n in ast.parse(path.read_text()).body:
        if isinstance(n, ast.Assign) and any(getattr(t, 'id', None) == '__all__' for t in n.targets):
            return list(ast.literal_eval(n.value))
    return []

def modules() -> list:
    "The library's public modules (`interpgen/*.py` not starting with `_`), by name."
    from nbdev.config import get_config
    lib = get_config().lib_path
    return sorted(p.stem for p in lib.glob('*.py') if not p.name.startswith('_'))

def _value_md(obj) -> str:
    "A short look at a constant."
    if isinstance(obj, dict):
        keys = ', '.join(f'`{k}`' for k in list(obj)[:20]) + (', ...' if len(obj) > 20 else '')
        return f'`dict` of {len(obj)}: {keys}'
    if isinstance(obj, (list, tuple, set, frozenset)) and len(obj) > 12:
        return f'`{type(obj).__name__}` of {len(obj)}: `{", ".join(map(repr, list(obj)[:12]))}, ...`'
    r = repr(obj)
    if isinstance(obj, str) and '\n' in obj:
        lines = obj.splitlines()
        body = '\n'.join(lines[:12]) + ('\n...' if len(lines) > 12 else '')
        return f'`str`, {len(lines)} lines:\n\n```text\n{body}\n```'
    if len(r) > 300: r = r[:300] + ' ...'
    return f'`{type(obj).__name__}`: `{r}`' if '`' not in r else f'`{type(obj).__name__}`:\n\n```text\n{r}\n```'

def _is_documentable(obj) -> bool:
    import inspect
    return inspect.isclass(obj) or inspect.isroutine(obj) or (callable(obj) and hasattr(obj, '__wrapped__'))

def _source_line(obj):
    "The line `obj` starts on in its module, or None."
    import inspect
    try: return inspect.getsourcelines(inspect.unwrap(obj))[1]
    except Exception: return None

def api_entry(lib: str, mod: str, n: str, obj, link) -> str:
    "MyST markdown for the name `n` of module `lib.mod`: its `show_doc` output, or for a constant its value."
    from nbdev.showdoc import show_doc
    from nbdev.doclinks import NbdevLookup
    aid = f'{lib}.{mod}.{n}'
    md = None
    if _is_documentable(obj):
        try: md = show_doc(obj, name=n)._repr_markdown_()
        except Exception: md = None
    if not md: return f'<div class="sd-anchor" id="{aid}"></div>\n\n### {n}\n\n{_value_md(obj)}'
    line = _source_line(obj)   # nbdev looks line numbers up by the bare name only: give the real one
    md = md.replace('#LNone)', f'#L{line})' if line else ')')
    md = link(NbdevLookup().linkify(md), prefix='../')
    md, _ = showdoc_md(md, level='###')
    return re.sub(r'<div class="sd-anchor" id="[^"]*"></div>', f'<div class="sd-anchor" id="{aid}"></div>', md, count=1)

def api_page(mod: str, lib: str, chapter, anchors: set, link) -> str:
    "MyST markdown for module `lib.mod`: every name in its `__all__`, constants first, then functions and classes."
    import importlib
    m = importlib.import_module(f'{lib}.{mod}')
    names = module_all(Path(m.__file__))
    out = [f'# {lib}.{mod}', '']
    if chapter: out += [f'{{.lead}}\nThe chapter [{chapter[1]}](../{chapter[0]}.html) explains `{lib}.{mod}` with examples and '
                        'tests; this page lists every name the module exports.', '']
    out += [f'`{lib}.{mod}.__all__` has {len(names)} names: ' + ', '.join(f'[`{n}`](#{lib}.{mod}.{n})' for n in names), '']
    groups = [('Constants', [n for n in names if not _is_documentable(getattr(m, n))]),
              ('Functions and classes', [n for n in names if _is_documentable(getattr(m, n))])]
    for title, ns in groups:
        if not ns: continue
        out += [f'## {title}', '']
        for n in ns:
            md = api_entry(lib, mod, n, getattr(m, n), link)
            if chapter and n.lower() in anchors: md += f'\n\nExplained in the chapter: [{chapter[1]}](../{chapter[0]}.html#{n.lower()})'
            out += [md, '']
    return '\n'.join(out)

# ---------------------------------------------------------------------------------------------------------------
# 4. The whole build

def build(out: Path, work: Path, jobs: int = 2, check: bool = True) -> Path:
    "Build the site into `out` (sources and Sphinx's cache in `work`); returns `out`."
    import json, yaml
    _setup_path()
    from nbdev.config import get_config
    from nbdev.processors import _default_exp
    from execnb.nbio import read_nb
    cfg = get_config()
    t0 = time.perf_counter()
    nbs = find_notebooks()
    pages = {p.stem: page_name(p) for p in nbs}
    src, raw = work / 'src', work / 'nbdev'
    if src.exists(): shutil.rmtree(src)
    if raw.exists(): shutil.rmtree(raw)
    warns = process_all(nbs, raw, jobs)
    for w in warns: print(f'docs: WARNING {w}', file=sys.stderr)
    t1 = time.perf_counter()
    print(f'docs: nbdev processed {len(nbs)} notebooks in {t1 - t0:.1f} s')

    src.mkdir(parents=True)
    (src / 'api').mkdir()
    procd = {p.stem: json.loads((raw / f'{pages[p.stem]}.ipynb').read_text()) for p in nbs}
    anchors = {pages[s]: sd_anchors(nb) for s, nb in procd.items()}
    link = Linker(pages.values(), anchors)
    titles, chapter_of = {}, {}
    for p in nbs:
        nb = procd[p.stem]
        fm = next((c for c in nb['cells'] if c['cell_type'] == 'raw' and _src(c['source']).startswith('---')), None)
        titles[p.stem] = (yaml.safe_load(_src(fm['source']).strip().strip('-')) or {}).get('title', p.stem) if fm else p.stem
        exp = _default_exp(read_nb(p))
        if exp: chapter_of[exp] = (pages[p.stem], titles[p.stem])
    mods = modules()
    order = {m: i for i, m in enumerate(chapter_of)}
    mods = sorted(mods, key=lambda m: (order.get(m, len(order)), m))
    chapters = [pages[p.stem] for p in nbs if pages[p.stem] != 'index']
    toctree = ('```{toctree}\n:hidden:\n:caption: Chapters\n\n' + '\n'.join(chapters) + '\n```\n\n'
               '```{toctree}\n:hidden:\n:caption: API reference\n\n' + '\n'.join(f'api/{m}' for m in mods) + '\n```')
    for p in nbs:
        nb = adapt_notebook(procd[p.stem], pages, link, toctree if pages[p.stem] == 'index' else '')
        (src / f'{pages[p.stem]}.ipynb').write_text(json.dumps(nb, indent=1))
    for m in mods:
        ch = chapter_of.get(m)
        (src / 'api' / f'{m}.md').write_text(api_page(m, cfg.lib_name, ch, anchors.get(ch[0], set()) if ch else set(), link))
    t2 = time.perf_counter()
    print(f'docs: wrote {len(nbs)} chapter pages and {len(mods)} API pages in {t2 - t1:.1f} s')

    html = work / 'html'   # Sphinx writes here (MyST-NB puts its `jupyter_execute` next to it), then it moves to `out`
    if html.exists(): shutil.rmtree(html)
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-c', str(DOCS), '-d', str(work / 'doctrees'),
           '-j', str(max(1, jobs)), '--keep-going', '-q', str(src), str(html)]
    env = dict(os.environ, INTERPGEN_DOCS_VERSION=cfg.version, PYTHONWARNINGS='ignore')
    r = subprocess.run(cmd, env=env)
    if r.returncode: raise SystemExit(f'docs: sphinx-build failed ({r.returncode})')
    if out.exists(): shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(html), str(out))
    (out / '.nojekyll').touch()
    t3 = time.perf_counter()
    print(f'docs: Sphinx wrote {out} in {t3 - t2:.1f} s; {t3 - t0:.1f} s in all')
    if check:
        sys.path.insert(0, str(DOCS))
        from check import check_site
        problems = check_site(out, ROOT)
        if problems: raise SystemExit('docs: check failed:\n  ' + '\n  '.join(problems))
    return out

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=str(ROOT / '_site'), help='where the HTML goes (replaced)')
    ap.add_argument('--work', default=None, help='processed sources and cache (default: <out>_build)')
    ap.add_argument('--jobs', type=int, default=min(2, os.cpu_count() or 1), help='processes for nbdev and Sphinx')
    ap.add_argument('--no-check', action='store_true', help='skip docs/check.py')
    ap.add_argument('--process', nargs=2, metavar=('SRC', 'DST'), help=argparse.SUPPRESS)   # one notebook (internal)
    a = ap.parse_args()
    if a.process:
        _setup_path()
        print(process_notebook(*a.process) or '')
        raise SystemExit(0)
    out = Path(a.out).resolve()
    build(out, Path(a.work).resolve() if a.work else out.with_name(out.name + '_build'), a.jobs, not a.no_check)
