"""The docs site as a reader sees it: built by `python docs/build.py`, opened in headless Chromium over HTTP.

Uses the site in `INTERPGEN_DOCS_SITE` when that holds a build (CI builds it once, just before the tests);
otherwise builds one into a temporary folder (about a minute). Skips only when Chromium is missing outside CI.
"""
import os, re, shutil, subprocess, sys, threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'docs'))
from check import check_site, exports, notebooks, page_of   # docs/check.py

IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
DRIVER = shutil.which('chromedriver')

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "A built site: the one CI made, or a fresh build."
    env = os.environ.get('INTERPGEN_DOCS_SITE')
    if env and (Path(env) / 'index.html').exists(): return Path(env)
    out = tmp_path_factory.mktemp('docs') / 'site'
    r = subprocess.run([sys.executable, str(ROOT / 'docs' / 'build.py'), '--out', str(out), '--no-check'],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    return out

@pytest.fixture(scope='module')
def url(site):
    "The site served over HTTP on a free local port, for as long as the tests need it."
    handler = partial(type('Quiet', (SimpleHTTPRequestHandler,), {'log_message': lambda *a: None}), directory=str(site))
    srv = ThreadingHTTPServer(('127.0.0.1', 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    yield f'http://127.0.0.1:{srv.server_address[1]}'
    srv.shutdown(); srv.server_close()

@pytest.fixture(scope='module')
def browser():
    "Headless Chromium driven by selenium (the Debian `chromium` and `chromium-driver` packages)."
    if not (CHROMIUM and DRIVER):
        if IN_CI: pytest.fail('chromium and chromedriver must be installed in CI (.ci/run installs them)')
        pytest.skip('chromium or chromedriver is not installed (apt-get install chromium chromium-driver)')
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for a in ('--headless', '--no-sandbox', '--disable-gpu', '--window-size=1400,1000'): opts.add_argument(a)
    opts.binary_location = CHROMIUM
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()

def open_page(d, url):
    "Load `url` and wait until the page and its images are loaded."
    d.get(url)
    d.execute_async_script("""const done = arguments[arguments.length - 1];
        const imgs = Array.from(document.images).filter(i => !i.complete);
        if (!imgs.length) return done();
        let n = imgs.length; imgs.forEach(i => { const f = () => (--n === 0) && done(); i.onload = f; i.onerror = f; });""")

def click(d, el):
    "Scroll `el` to the middle of the window, then click it as a reader would."
    d.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", el); el.click()

def nav_links(d):
    "The hrefs of the left sidebar, resolved to page paths."
    hrefs = d.execute_script("return Array.from(document.querySelectorAll('.sidebar-tree a.reference')).map(a => a.href)")
    return {re.sub(r'^https?://[^/]+/', '', h).split('#')[0] for h in hrefs}

def loaded_images(d):
    "(src, naturalWidth) of every image on the page."
    return d.execute_script("return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")

def page_errors(d):
    "Severe console messages: a failed resource or a script error."
    return [e['message'] for e in d.get_log('browser') if e['level'] == 'SEVERE' and 'favicon' not in e['message']]

def test_home_page(site, url, browser):
    "The home page: title, a navigation link to every notebook's page and every API page, a loaded plot, no errors."
    open_page(browser, f'{url}/index.html')
    assert browser.title.startswith('interpgen'), browser.title
    assert browser.find_element('css selector', 'h1').text.startswith('interpgen')
    nav = nav_links(browser)
    chapters = [page_of(nb) for nb in notebooks(ROOT) if page_of(nb) != 'index.html']
    assert len(chapters) >= 8
    assert set(chapters) <= nav, set(chapters) - nav
    assert {f'api/{m}.html' for m in exports(ROOT)} <= nav
    imgs = loaded_images(browser)
    assert imgs and all(w > 0 for _, w in imgs), imgs     # the training-curve plot is there and decoded
    assert page_errors(browser) == []
    # the chapter links in the text lead to pages that open
    click(browser, browser.find_element('css selector', 'article a[href="sampler.html"]'))
    assert browser.title.startswith('Sampler'), browser.title

def test_api_page(site, url, browser):
    "An API page: title, navigation, every name of the module's `__all__` as an anchor and a heading."
    open_page(browser, f'{url}/api/sampler.html')
    assert browser.title.startswith('interpgen.sampler'), browser.title
    assert 'sampler.html' in nav_links(browser) and 'api/store.html' in nav_links(browser)
    names = exports(ROOT)['sampler']
    assert 'PatternDatasetSampler' in names
    for n in names:
        el = browser.find_element('id', f'interpgen.sampler.{n}')
        assert el is not None
    heads = browser.execute_script("return Array.from(document.querySelectorAll('h3')).map(h => h.textContent.replace(/[#¶]/g, '').trim())")
    assert set(names) <= set(heads), set(names) - set(heads)
    # a signature with its documented parameters, and a link back to the chapter that explains it
    sig = browser.find_element('id', 'interpgen.sampler.PatternDatasetSampler').find_element('xpath', 'following::pre[1]').text
    assert 'vocab_size:int=7' in sig and '# number of letters' in sig
    assert page_errors(browser) == []
    click(browser, browser.find_element('css selector', 'a[href="../sampler.html#patterndatasetsampler"]'))
    assert browser.title.startswith('Sampler') and browser.current_url.endswith('#patterndatasetsampler')

def test_chapter_plots_and_tutorial(site, url, browser):
    "Plots saved in the notebooks show on their pages; the tutorial carries its saved outputs."
    for page in ('sampler.html', 'tutorial.html'):
        open_page(browser, f'{url}/{page}')
        imgs = loaded_images(browser)
        assert imgs and all(w > 0 for _, w in imgs), (page, imgs)
    text = browser.find_element('css selector', 'article').text
    assert 'Export prompts and score a toy interpreter' in text and 'toy interpreter: exact match' in text
    assert 'check of' in text and 'all passed' in text        # the slow cells' saved outputs are shown

def test_search_offline(site, url, browser):
    "Sphinx's search runs in the page from the local index: a symbol finds its API page."
    open_page(browser, f'{url}/search.html?q=PatternDatasetSampler')
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(browser, 30).until(lambda d: d.find_elements('css selector', '#search-results li a'))
    hits = browser.execute_script("return Array.from(document.querySelectorAll('#search-results li a')).map(a => a.getAttribute('href'))")
    assert any(h.startswith('api/sampler.html') for h in hits), hits

def test_checker(site, tmp_path):
    "docs/check.py passes on the build, and names a notebook without a page and an exported name that is missing."
    assert check_site(site, ROOT, quiet=True) == []
    bad = tmp_path / 'site'
    shutil.copytree(site, bad)
    (bad / 'trainer.html').unlink()
    api = bad / 'api' / 'store.html'
    api.write_text(api.read_text().replace('id="interpgen.store.open_zoo"', 'id="gone"'))
    problems = check_site(bad, ROOT, quiet=True)
    assert any('01_trainer.ipynb has no page' in p for p in problems), problems
    assert any('interpgen.store.open_zoo' in p and 'missing' in p for p in problems), problems
    (bad / 'index.html').write_text((bad / 'index.html').read_text().replace('</head>', '<script src="https://cdn.example/x.js"></script></head>'))
    assert any('loads <script> https://cdn.example/x.js' in p for p in check_site(bad, ROOT, quiet=True))
