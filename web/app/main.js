// The app shell: theme toggle, page navigation, and the share-link route.
//   /r/<32 hex>        a stored result (result.js), as the server's share link serves it
//   #/s/<packed>       a result computed in a browser, carried in the link itself (fragment.js)
//   #/playground       one prompt, completions side by side (playground.js)
//   #/directions       extract a refusal direction (directions.js)
//   #/compare, #/repair  compressed vs base, AIRD repair (compare.js)
//   #/learn            a guided walk-through (learn.js)

import { h, message } from './ui.js';
import { fragmentOf } from './fragment.js';

const PAGES = [
  { hash: '#/playground', label: 'Playground', load: () => import('./playground.js') },
  { hash: '#/directions', label: 'Directions', load: () => import('./directions.js') },
  { hash: '#/compare', label: 'Compressed vs base', load: () => import('./compare.js'), kind: 'compare' },
  { hash: '#/repair', label: 'Repair', load: () => import('./compare.js'), kind: 'aird' },
  { hash: '#/learn', label: 'Learn', load: () => import('./learn.js') },
];

// ------------------------------------------------------------------ theme
const THEMES = ['auto', 'light', 'dark'];
const themeButton = document.getElementById('theme');
function applyTheme(t) {
  if (t === 'auto') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = t;
  themeButton.textContent = `theme: ${t}`;
  try {
    if (t === 'auto') localStorage.removeItem('refusal-lens.theme');
    else localStorage.setItem('refusal-lens.theme', t);
  } catch {
    // not remembered
  }
}
applyTheme(document.documentElement.dataset.theme || 'auto');
themeButton.addEventListener('click', () => {
  const now = document.documentElement.dataset.theme || 'auto';
  applyTheme(THEMES[(THEMES.indexOf(now) + 1) % THEMES.length]);
});

// ------------------------------------------------------------------ navigation
const nav = document.querySelector('nav.pages');
const root = document.getElementById('app');
// Plain fragment links: on /r/<id> the server sets <base href="/">, so they lead back to the
// app at "/"; on a static host they stay on the page, wherever it is hosted.
for (const p of PAGES) nav.append(h('a', { href: p.hash, dataset: { page: p.hash.slice(2) } }, p.label));

let cleanup = null;

async function route() {
  const share = location.pathname.match(/^\/r\/([0-9a-f]{32})\/?$/);
  const packed = share ? null : fragmentOf(location.hash);
  let page = null;
  let mod;
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  document.body.dataset.app = 'loading';
  try {
    if (share || packed) {
      mod = await import('./result.js');
    } else {
      page = PAGES.find((p) => p.hash === location.hash) || PAGES[0];
      mod = await page.load();
    }
    for (const a of nav.querySelectorAll('a')) {
      if (page && a.dataset.page === page.hash.slice(2)) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    root.replaceChildren();
    document.body.dataset.page = page ? page.hash.slice(2) : 'result';
    cleanup = (await mod.render(root, { resultId: share?.[1], fragment: packed, kind: page?.kind })) || null;
    document.body.dataset.app = 'ready';
  } catch (e) {
    console.error(e);
    root.replaceChildren(message(`This page failed to load: ${e.message}`));
    document.body.dataset.app = 'error';
  }
}

window.addEventListener('hashchange', () => {
  // On a share link, the pages live at "/": go there rather than re-render the result.
  if (/^\/r\//.test(location.pathname)) location.assign(`/${location.hash}`);
  else route();
});
route();
