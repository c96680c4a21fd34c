"""Check a built docs site: every notebook has a page in the navigation, every exported name is documented, plots
and search are there, and no page loads anything from the network.

    python docs/check.py [_site]

Reads the repository (notebooks and `interpgen/*.py`) and the built HTML only; imports nothing from the library.
Exits 1 and lists the problems when something is missing.
"""
import ast, json, re, sys
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

class Page(HTMLParser):
    "What the checks need from one HTML page: element ids, headings, links, images and external resources."
    def __init__(self, text):
        super().__init__()
        self.ids, self.entries, self.links, self.imgs, self.external, self.h1, self.headings = set(), set(), [], [], [], [], []
        self._head = None
        self.feed(text)
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if a.get('id') and 'sd-anchor' in (a.get('class') or '').split(): self.entries.add(a['id'])   # a show_doc entry
        if tag == 'a' and a.get('href'): self.links.append(a['href'])
        if tag == 'img' and a.get('src'): self.imgs.append(a['src'])
        res = {'script': a.get('src'), 'img': a.get('src'), 'iframe': a.get('src'), 'source': a.get('src'),
               'link': a.get('href') if 'stylesheet' in (a.get('rel') or '') or a.get('rel') in ('preload', 'modulepreload') else None}
        url = res.get(tag)
        if url and re.match(r'(https?:)?//', url): self.external.append(f'<{tag}> {url}')
        if tag in ('h1', 'h2', 'h3', 'h4'): self._head = [tag, '']
    def handle_data(self, data):
        if self._head: self._head[1] += data
    def handle_endtag(self, tag):
        if self._head and tag == self._head[0]:
            t = self._head[1].strip().rstrip('#¶').strip()
            (self.h1 if tag == 'h1' else self.headings).append(t)
            self._head = None

def notebooks(root: Path) -> list:
    "The notebooks of `root`'s `nbs/` that nbdev documents (not starting with `_` or `.`)."
    return sorted(p for p in (root / 'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))

def page_of(nb: Path) -> str:
    "The page of notebook `nb`, named as nbdev's Quarto site names it: `00_sampler.ipynb` -> `sampler.html`."
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb.name.lower())[:-len('.ipynb')] + '.html'

def exports(root: Path) -> dict:
    "Module name -> the names in its `__all__`, for every `interpgen/*.py` not starting with `_`, read with `ast`."
    res = {}
    for py in sorted((root / 'interpgen').glob('*.py')):
        if py.name.startswith('_'): continue
        names = []
        for n in ast.parse(py.read_text()).body:
            if isinstance(n, ast.Assign) and any(getattr(t, 'id', None) == '__all__' for t in n.targets):
                names = list(ast.literal_eval(n.value))
        res[py.stem] = names
    return res

def search_docnames(site: Path) -> list:
    "The pages Sphinx's offline search index covers."
    js = (site / 'searchindex.js').read_text()
    return json.loads(js[js.index('(') + 1:js.rindex(')')])['docnames']

def check_site(site, root=ROOT, quiet=False) -> list:
    "Problems found in the site at `site` built from the repository at `root` (empty when it is complete)."
    site, root, problems = Path(site), Path(root), []
    if not (site / 'index.html').exists(): return [f'{site}/index.html is missing: no site was built there']
    pages = {p.relative_to(site).as_posix(): Page(p.read_text(encoding='utf-8')) for p in site.rglob('*.html')}
    home = pages['index.html']
    # 1. a page per notebook, with a title, linked from the navigation
    nbs = notebooks(root)
    for nb in nbs:
        pg = page_of(nb)
        if pg not in pages: problems.append(f'notebook {nb.name} has no page ({pg})'); continue
        if not pages[pg].h1: problems.append(f'{pg} (from {nb.name}) has no title')
        if pg != 'index.html' and pg not in home.links: problems.append(f'{pg} (from {nb.name}) is not in the navigation')
    # 2. every exported name on its module's API page, as an anchor and a heading
    n_syms, on_chapter = 0, 0
    chapter_ids = set().union(*(pages[page_of(nb)].entries for nb in nbs if page_of(nb) in pages))
    for mod, names in exports(root).items():
        pg = f'api/{mod}.html'
        if pg not in pages: problems.append(f'module interpgen.{mod} has no API page ({pg})'); continue
        if pg not in home.links: problems.append(f'{pg} is not in the navigation')
        for n in names:
            n_syms += 1
            if f'interpgen.{mod}.{n}' not in pages[pg].ids or n not in pages[pg].headings:
                problems.append(f'interpgen.{mod}.{n} (in __all__) is missing from {pg}')
            on_chapter += n.lower() in chapter_ids
    # 3. plots present, and every image the pages show is in the site
    n_imgs = 0
    for pg, p in pages.items():
        for src in p.imgs:
            if re.match(r'(https?:|data:)', src): continue
            n_imgs += 1
            if not (site / pg).parent.joinpath(src.split('#')[0]).exists(): problems.append(f'{pg}: image {src} is missing')
    if not n_imgs: problems.append('no page shows a plot')
    # 4. offline search covers every page; nothing is fetched from the network when a page is viewed
    try:
        docs = set(search_docnames(site))
        for pg in pages:
            d = pg[:-len('.html')]
            if d not in docs and d not in ('search', 'genindex'): problems.append(f'{pg} is not in the search index')
    except Exception as e: problems.append(f'searchindex.js is missing or unreadable: {e}')
    for pg, p in pages.items():
        for e in p.external: problems.append(f'{pg} loads {e} from the network')
    for css in list(site.rglob('*.css')) + list(site.rglob('*.js')):
        for m in re.finditer(r'@import\s+url\(\s*["\']?(https?:)?//[^)]*\)|url\(\s*["\']?(https?:)?//[^)]*\)', css.read_text(errors='ignore')):
            problems.append(f'{css.relative_to(site)} loads {m.group(0)[:80]} from the network')
    if not quiet:
        n_mods = len(exports(root))
        print(f'docs check: {len(nbs)} notebooks have pages; {n_syms} exported names of {n_mods} modules are on the API pages '
              f'({on_chapter} also have a show_doc entry in their chapter); {n_imgs} images; search covers {len(pages)} pages; '
              f'{len(problems)} problems')
    return problems

if __name__ == '__main__':
    site = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / '_site')
    problems = check_site(site)
    for p in problems: print(f'docs check: {p}', file=sys.stderr)
    sys.exit(1 if problems else 0)
