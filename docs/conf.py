# Sphinx configuration for the offline docs site; `python docs/build.py` runs Sphinx with it on the sources it writes.
import os

project = 'interpgen'
author = 'interpgen developers'
copyright = '2026 onwards, interpgen developers'
release = os.environ.get('INTERPGEN_DOCS_VERSION', '')

extensions = ['myst_nb']
source_suffix = {'.ipynb': 'myst-nb', '.md': 'myst-nb'}
root_doc = 'index'
exclude_patterns = ['_build', '**.ipynb_checkpoints']

# The notebooks carry their saved outputs (nbdev's processing re-ran only what show_doc needs): never execute here.
nb_execution_mode = 'off'
nb_render_markdown_format = 'myst'      # show_doc output is markdown: render it with headings, tables and HTML
nb_merge_streams = True
nb_ipywidgets_js = {}                   # no widget JavaScript from a CDN
myst_enable_extensions = ['attrs_block', 'attrs_inline', 'colon_fence', 'deflist']
myst_all_links_external = True          # build.py writes every internal link as a relative .html link
myst_heading_anchors = 3
suppress_warnings = ['myst.header', 'misc.highlighting_failure', 'mystnb.unknown_mime_type']

html_theme = 'furo'
html_title = 'interpgen'
html_static_path = ['_static']
html_css_files = ['interpgen.css']
html_copy_source = False
html_show_sourcelink = False
html_theme_options = {'navigation_with_keys': True, 'top_of_page_buttons': []}
