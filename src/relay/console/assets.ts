import { createHash } from 'node:crypto';

/**
 * The console's stylesheet and script, kept as strings so they travel inside the one-file release bundle
 * (scripts/release.mjs) like the rest of the code: no files to find at run time, no build step, no CDN.
 */

export const STYLESHEET = `
:root { color-scheme: light dark; --fg: #1b1f24; --bg: #fff; --muted: #57606a; --line: #d0d7de; --bad: #b3261e; --bad-bg: #fde7e6; --ok: #116329; --ok-bg: #dafbe1; --warn: #7d4e00; --warn-bg: #fff4d6; --link: #0550ae; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --bg: #0d1117; --muted: #9198a1; --line: #30363d; --bad: #ff8e86; --bad-bg: #3d1614; --ok: #7ee2a1; --ok-bg: #10301c; --warn: #f2cc60; --warn-bg: #3a2c05; --link: #79b8ff; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
a { color: var(--link); }
:focus-visible { outline: 3px solid var(--link); outline-offset: 2px; }
.skip { position: absolute; left: -999px; } .skip:focus { left: 8px; top: 8px; background: var(--bg); padding: 4px 8px; z-index: 1; }
header { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; justify-content: space-between; padding: 8px 16px; border-bottom: 1px solid var(--line); }
header nav { display: flex; flex-wrap: wrap; gap: 4px 16px; align-items: center; }
header .brand { font-weight: 700; text-decoration: none; color: var(--fg); }
main { padding: 12px 16px 32px; max-width: 1200px; }
h1 { font-size: 1.35rem; margin: 8px 0 12px; } h2 { font-size: 1.1rem; margin: 20px 0 8px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
caption { text-align: left; color: var(--muted); padding: 4px 0; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; overflow-wrap: anywhere; }
th { font-weight: 600; white-space: nowrap; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 0.85rem; font-weight: 600; white-space: nowrap; }
.badge.online, .badge.handled { color: var(--ok); background: var(--ok-bg); }
.badge.offline, .badge.failed, .badge.rejected, .badge.overdue { color: var(--bad); background: var(--bad-bg); }
.badge.queued, .badge.sent, .badge.received, .badge.expired, .badge.cancelled { color: var(--warn); background: var(--warn-bg); }
tr.offline td:first-child { border-left: 4px solid var(--bad); }
form.inline { display: inline; }
form.filters { display: flex; flex-wrap: wrap; gap: 8px 12px; align-items: end; margin-bottom: 12px; }
label { display: flex; flex-direction: column; font-size: 0.9rem; gap: 2px; }
input, select, button { font: inherit; padding: 4px 8px; border: 1px solid var(--line); border-radius: 6px; background: var(--bg); color: var(--fg); max-width: 100%; }
button { cursor: pointer; font-weight: 600; }
button.danger { color: var(--bad); border-color: var(--bad); }
.alert { border: 1px solid var(--bad); background: var(--bad-bg); padding: 8px 12px; border-radius: 6px; }
.notice { border: 1px solid var(--ok); background: var(--ok-bg); padding: 8px 12px; border-radius: 6px; }
pre, code.block { display: block; white-space: pre-wrap; overflow-wrap: anywhere; background: color-mix(in srgb, var(--fg) 6%, transparent); padding: 8px; border-radius: 6px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; } dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
ol.timeline { padding-left: 20px; } ol.timeline li { margin: 4px 0; }
.actions { display: flex; flex-wrap: wrap; gap: 8px; margin: 12px 0; }
.muted { color: var(--muted); }
.live-state { font-size: 0.85rem; color: var(--muted); }
.signin { max-width: 420px; margin: 48px auto; padding: 0 16px; } .signin form { display: flex; flex-direction: column; gap: 12px; }
@media (max-width: 640px) {
  table.stack thead { position: absolute; left: -9999px; }
  table.stack tr { display: block; border-bottom: 1px solid var(--line); padding: 6px 0; }
  table.stack td { display: flex; gap: 8px; border: 0; padding: 2px 4px; }
  table.stack td::before { content: attr(data-label); font-weight: 600; min-width: 7.5em; color: var(--muted); }
  tr.offline td:first-child { border-left: 0; }
}
`;

/**
 * Live updates: one EventSource on /console/events. A presence event flips that device's badge at once;
 * after any event the page's live regions are fetched again (at most every 500 ms) and swapped in, unless
 * the keyboard focus is inside one (then on the next event). The whole page is rendered by the server.
 */
export const SCRIPT = `
(function () {
  'use strict';
  if (!window.EventSource || !document.querySelector('[data-live]')) return;
  var state = document.getElementById('live-state');
  var pending = false, timer = null;
  function say(text) { if (state) state.textContent = text; }
  function refresh() {
    timer = null;
    var main = document.getElementById('main');
    var url = (main && main.getAttribute('data-live-url')) || location.href;
    fetch(url, { credentials: 'same-origin', headers: { accept: 'text/html' } }).then(function (r) {
      if (r.redirected || !r.ok) { if (r.status === 401 || r.redirected) location.reload(); return null; }
      return r.text();
    }).then(function (html) {
      if (!html) return;
      var doc = new DOMParser().parseFromString(html, 'text/html');
      document.querySelectorAll('[data-live]').forEach(function (el) {
        var fresh = doc.getElementById(el.id);
        if (!fresh) return;
        if (el.contains(document.activeElement) && document.activeElement !== document.body) { pending = true; return; }
        el.replaceWith(fresh);
      });
    }).catch(function () {});
  }
  function soon() { if (!timer) timer = setTimeout(refresh, 500); }
  function presence(name, online) {
    document.querySelectorAll('[data-device]').forEach(function (row) {
      if (row.getAttribute('data-device') !== name) return;
      row.classList.toggle('offline', !online);
      row.querySelectorAll('[data-presence]').forEach(function (b) {
        b.textContent = online ? 'online' : 'offline';
        b.className = 'badge ' + (online ? 'online' : 'offline');
      });
    });
  }
  var main0 = document.getElementById('main');
  var after = main0 && main0.getAttribute('data-live-after');
  var es = new EventSource('/console/events' + (after ? '?after=' + encodeURIComponent(after) : ''));
  es.onopen = function () { say('Live updates on'); if (pending) { pending = false; soon(); } };
  es.onerror = function () { say('Live updates paused, reconnecting…'); };
  ['device.online', 'device.offline'].forEach(function (t) {
    es.addEventListener(t, function (e) {
      try { presence(JSON.parse(e.data).device, t === 'device.online'); } catch (err) {}
      soon();
    });
  });
  ['message.queued', 'message.sent', 'message.received', 'message.handled', 'message.failed', 'message.rejected',
   'message.expired', 'message.cancelled', 'message.overdue'].forEach(function (t) { es.addEventListener(t, soon); });
  document.addEventListener('focusout', function () { if (pending) { pending = false; soon(); } });
})();
`;

const etag = (s: string) => `"${createHash('sha256').update(s).digest('base64url').slice(0, 16)}"`;

export const ASSETS: Record<string, { type: string; body: string; etag: string }> = {
  '/console/app.css': { type: 'text/css; charset=utf-8', body: STYLESHEET, etag: etag(STYLESHEET) },
  '/console/app.js': { type: 'text/javascript; charset=utf-8', body: SCRIPT, etag: etag(SCRIPT) },
};
