// Renders CDS Hooks cards as the CDS Hooks sandbox (github.com/cds-hooks/sandbox) shows them, for
// the card-rendering tests (tests/test_card_rendering.py). Test-only; no sandbox code is copied.
//
//   node render_card.mjs < response-or-card.json > page.html       a static page (no script)
//   node render_card.mjs --detail < card.json > fragment.html      the detail markdown only
//
// Input: a CDS Hooks response ({"cards": [...]}) or one card, optionally wrapped as
// {"cards": [...], "patient": {"id", "name", "birthDate"}}.
//
// The markdown is rendered exactly as the sandbox's src/components/CardList/card-list.jsx does:
//   <ReactMarkdown remarkPlugins={[remarkGfm]} rehypePlugins={[rehypeRaw]}>{card.detail}</ReactMarkdown>
// with the same versions (react-markdown 10.1.0, remark-gfm 4.0.1, rehype-raw 7.0.0, react and
// react-dom 18.3.1; package.json "overrides" pin every transitive micromark/mdast/hast package to the
// version in the sandbox's package-lock.json). Default options otherwise: GFM tables, strikethrough,
// task lists and autolink literals (bare http(s):// and www. URLs become links), raw HTML passed
// through by rehype-raw, react-markdown's defaultUrlTransform on hrefs.
//
// The layout around it approximates the sandbox's patient-view screen at 1500x2000 so that vertical
// positions are comparable. Derived from the sandbox source (MainView/main-view.css,
// PatientView/patient-view.css, CardList/card-list.css, theme/index.js, MUI 5 Card/CardContent/
// Button/ButtonGroup defaults and CssBaseline) and checked against the real sandbox build in headless
// Chromium at 1500x2000 (computed styles and bounding boxes): the card starts at x=30, y≈268, is
// 674 px wide (half of the window, padding 30 px, right margin 16 px); the summary is 18 px bold with
// line-height 1.5; buttons are MUI "medium" (14 px, weight 500, line-height 1.75, letter-spacing
// normal, padding 6px 16px: 36.5 px high); the font stack is the theme's; markdown elements keep the
// browser defaults (no table borders, cell padding 1 px, code in monospace). For the same cards this
// page put every button at the same x, y, width and height as the real sandbox, to 0.1 px.
import { readFileSync } from 'node:fs';
import { createElement } from 'react';
import { renderToStaticMarkup } from 'react-dom/server';
import ReactMarkdown from 'react-markdown';
import remarkGfm from 'remark-gfm';
import rehypeRaw from 'rehype-raw';

const INDICATOR_ORDER = { info: 0, warning: 1, critical: 2, error: 3 };
const SUMMARY_COLOURS = { info: '#0079be', warning: '#ffae42', critical: '#c00', error: '#333' };
const UNLAUNCHABLE = 'Cannot launch SMART link without a SMART-enabled FHIR server';

export function renderDetail(markdown) {
  return renderToStaticMarkup(
    createElement(ReactMarkdown, { remarkPlugins: [remarkGfm], rehypePlugins: [rehypeRaw] }, markdown),
  );
}

const esc = (text) => String(text)
  .replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

function renderCard(card, index) {
  const parts = [];
  const colour = SUMMARY_COLOURS[card.indicator] || '#333';
  parts.push(`<p class="summary" data-role="summary" style="color:${colour}"> ${esc(card.summary)} </p>`);
  if (card.source && card.source.label) {
    const icon = card.source.icon ? ` <img class="card-icon" src="${esc(card.source.icon)}" alt="Could not fetch icon" width="100" height="100">` : '';
    parts.push(`<div class="card-source">Source: <a class="source-link" data-role="source" href="${esc(card.source.url || '#')}"> ${esc(card.source.label)} </a> ${icon} </div>`);
  }
  if (card.detail) {
    parts.push(`<div class="detail" data-role="detail">${renderDetail(card.detail)}</div>`);
  }
  const suggestions = (card.suggestions || []).map((s) => (
    `<button type="button" class="btn btn-contained" data-role="suggestion">${esc(s.label)}</button>`));
  parts.push(`<div class="suggestions-section">${suggestions.join('')}</div>`);
  // No SMART launch support here, as in a sandbox whose FHIR server does not answer
  // _services/smart/Launch: SMART links are greyed with the sandbox's notice.
  const links = (card.links || []).map((link) => {
    const smart = link.type === 'smart';
    return `<div><button type="button" class="btn btn-text" data-role="link" data-url="${esc(link.url)}"${smart ? ` disabled title="${UNLAUNCHABLE}"` : ' title=""'}>${esc(link.label)}</button><div class="unlaunchable">${smart ? UNLAUNCHABLE : ''}</div></div>`;
  });
  parts.push(`<div class="links-section">${links.join('')}</div>`);
  let dismiss = '';
  if (card.uuid) {
    dismiss = card.overrideReasons
      ? '<div><hr><span class="btn-group"><button type="button" class="btn btn-outlined" data-role="dismiss">Dismiss</button><button type="button" class="btn btn-outlined btn-small" aria-label="select dismiss reason">&#9662;</button></span></div>'
      : '<div><hr><button type="button" class="btn btn-outlined" data-role="dismiss" title="Dismiss Card">Dismiss</button></div>';
  }
  parts.push(`<div class="dismiss-section">${dismiss}</div>`);
  const indicator = esc(card.indicator || 'info');
  return `<div class="decision-card alert-${indicator}" data-role="card" data-index="${index}"><div class="card-content">${parts.join('')}</div></div>`;
}

const CSS = `
*, *::before, *::after { box-sizing: inherit; }
html { box-sizing: border-box; -webkit-font-smoothing: antialiased; }
body { margin: 0; color: #333; background: #fff; font-family: -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; font-size: 1rem; line-height: 1.5; }
strong, b { font-weight: 700; }
.header { position: fixed; top: 0; width: 100%; height: 70px; background: #384e77; color: #fff; padding: 0 28px; display: flex; align-items: center; font-weight: 700; z-index: 100; }
.container { min-height: 100vh; width: 100%; display: flex; overflow: hidden; position: relative; padding-top: 70px; }
.patient-view { display: inline-block; padding: 30px; margin: 0 0 20px; vertical-align: top; width: 50%; }
.context-view { width: 50%; padding: 30px; border-left: 1px solid #0D0630; }
.view-title { padding: 0 0 10px; margin: 0 0 10px; font-size: 1.5em; letter-spacing: -0.025em; color: #384E77; border-bottom: 2px solid #eee; }
.patient-data-text { font-size: 1em; margin: 0 0 20px; color: #888; }
.decision-card { padding: 20px; margin: 16px; margin-left: 0; background: #fff; border: 1px solid #e0e0e0; border-radius: 12px; border-left-width: 5px; box-shadow: 0 2px 8px rgba(0,0,0,.08), 0 1px 3px rgba(0,0,0,.04); overflow: hidden; }
.alert-info { border-left-color: #0079be; background: linear-gradient(to right, rgba(0,121,190,.03) 0%, #fff 15%); }
.alert-warning { border-left-color: #ffae42; background: linear-gradient(to right, rgba(255,174,66,.05) 0%, #fff 15%); }
.alert-critical { border-left-color: #c00; background: linear-gradient(to right, rgba(204,0,0,.04) 0%, #fff 15%); }
.card-content { padding: 16px 16px 24px; }
.summary { margin: 0; font-size: 18px; font-weight: 700; line-height: 1.5; }
.card-source { font-size: .85em; font-style: italic; margin: 0 0 5px; }
.source-link { color: blue; text-decoration: none; margin-right: 8px; }
.card-icon { display: block; width: 100px; margin: 0 0 5px; }
.unlaunchable { font-size: .85em; font-style: italic; margin: 0 0 5px; }
.btn { display: inline-flex; align-items: center; justify-content: center; min-width: 64px; padding: 6px 16px; border-radius: 4px; border: 0; margin: 0; font-family: inherit; font-size: 0.875rem; font-weight: 500; line-height: 1.75; letter-spacing: normal; text-transform: none; vertical-align: middle; cursor: pointer; }
.btn-contained { color: #fff; background: #384e77; box-shadow: 0 3px 1px -2px rgba(0,0,0,.2), 0 2px 2px 0 rgba(0,0,0,.14), 0 1px 5px 0 rgba(0,0,0,.12); }
.btn-text { padding: 6px 8px; color: #384e77; background: transparent; }
.btn-text:disabled { color: rgba(0,0,0,.26); cursor: default; }
.btn-outlined { padding: 5px 15px; color: #384e77; background: transparent; border: 1px solid rgba(56,78,119,.5); }
.btn-group { display: inline-flex; }
.btn-group .btn:first-child { border-top-right-radius: 0; border-bottom-right-radius: 0; }
.btn-group .btn + .btn { margin-left: -1px; border-top-left-radius: 0; border-bottom-left-radius: 0; min-width: 40px; width: 44px; padding: 5px 10px; }
`;

export function renderPage(input) {
  const cards = (Array.isArray(input.cards) ? input.cards : [input])
    .slice()
    .sort((b, a) => (INDICATOR_ORDER[a.indicator] ?? 0) - (INDICATOR_ORDER[b.indicator] ?? 0));
  const patient = input.patient || {};
  const body = cards.length
    ? cards.map(renderCard).join('')
    : '<p data-role="no-cards">No recommendations to display</p>';
  return `<!DOCTYPE html>
<html lang="en-US"><head><meta charset="UTF-8"><title>Card as the CDS Hooks sandbox shows it</title>
<style>${CSS}</style></head>
<body><div class="header">CDS Hooks Sandbox (card-rendering test page)</div>
<div class="container"><div class="patient-view"><h1 class="view-title">Patient View</h1>
<h2>${esc(patient.name || 'Test Patient')}</h2>
<div class="patient-data-text"><p><strong>ID: </strong> ${esc(patient.id || 'unknown')} <strong>Birthdate: </strong> ${esc(patient.birthDate || 'unknown')}</p></div>
<div data-role="cards">${body}</div></div>
<div class="context-view"><h1 class="view-title">CDS Developer Panel</h1></div></div>
</body></html>
`;
}

function main() {
  const detailOnly = process.argv.includes('--detail');
  const input = JSON.parse(readFileSync(0, 'utf8'));
  if (detailOnly) {
    const card = Array.isArray(input.cards) ? input.cards[0] : input;
    process.stdout.write(renderDetail(card.detail || ''));
  } else {
    process.stdout.write(renderPage(input));
  }
}

main();
