import { FINAL_STATUSES, MessageStatus, type HistoryEntry, type MessageRecord } from '../store/types.js';

/**
 * The console's pages as HTML text: pure functions of what the routes read. Every value from the store or
 * the request goes through `esc`. Tables carry a caption and column headers (screen readers), and each cell
 * a `data-label` for the narrow layout (320 px: one labelled line per field).
 */

export function esc(v: unknown): string {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

const u = encodeURIComponent;

export function when(ms: number | undefined, precise = false): string {
  if (ms === undefined) return '<span class="muted">never</span>';
  const iso = new Date(ms).toISOString();
  return `<time datetime="${iso}">${iso.slice(0, precise ? 23 : 19).replace('T', ' ')} UTC</time>`;
}

function size(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

const badge = (text: string, kind = text) => `<span class="badge ${esc(kind)}">${esc(text)}</span>`;

export interface Chrome {
  title: string;
  /** The session's CSRF token; absent on the sign-in page. */
  csrf?: string;
  current?: 'devices' | 'messages';
  /** Where the live script re-reads this page (a page answered to a POST has another URL). */
  liveUrl?: string;
  /** The last event the page already shows: the live stream starts after it (nothing missed in between). */
  after?: number;
}

export function layout(c: Chrome, body: string): string {
  const nav = c.csrf
    ? `<header>
  <nav aria-label="Console">
    <a class="brand" href="/">dropwire</a>
    <a href="/"${c.current === 'devices' ? ' aria-current="page"' : ''}>Devices</a>
    <a href="/console/messages"${c.current === 'messages' ? ' aria-current="page"' : ''}>Messages</a>
    <span id="live-state" class="live-state" role="status"></span>
  </nav>
  <form class="inline" method="post" action="/console/sign-out">${csrfField(c.csrf)}<button type="submit">Sign out</button></form>
</header>`
    : '';
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(c.title)} · dropwire</title>
<link rel="stylesheet" href="/console/app.css">
${c.csrf ? '<script src="/console/app.js" defer></script>' : ''}
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
${nav}
<main id="main"${c.liveUrl ? ` data-live-url="${esc(c.liveUrl)}"` : ''}${c.after !== undefined ? ` data-live-after="${c.after}"` : ''}>
${body}
</main>
</body>
</html>
`;
}

const csrfField = (csrf: string) => `<input type="hidden" name="csrf" value="${esc(csrf)}">`;

export function signInPage(o: { error?: string; signedOut?: boolean }): string {
  return layout(
    { title: 'Sign in' },
    `<div class="signin">
<h1>Sign in to the relay console</h1>
${o.signedOut ? '<p class="notice" role="status">You are signed out.</p>' : ''}
${o.error ? `<p class="alert" role="alert">${esc(o.error)}</p>` : ''}
<form method="post" action="/console/sign-in">
  <label for="token">Admin token<input id="token" name="token" type="password" autocomplete="current-password" required autofocus aria-describedby="token-help"></label>
  <p id="token-help" class="muted">Make one on the relay host: <code>dropwire relay token add NAME --admin</code></p>
  <button type="submit">Sign in</button>
</form>
</div>`,
  );
}

// --- devices -------------------------------------------------------------------------------------

export interface DeviceView {
  name: string;
  enrolled: boolean;
  online: boolean;
  lastSeen?: number;
  queued: number;
  overdue: number;
  agentVersion?: string;
  transport?: string;
  address?: string;
}

/** Offline devices first, then those with overdue messages, then by name. */
export function deviceOrder(a: DeviceView, b: DeviceView): number {
  if (a.online !== b.online) return a.online ? 1 : -1;
  if (a.overdue > 0 !== b.overdue > 0) return a.overdue > 0 ? -1 : 1;
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

function deviceRow(d: DeviceView): string {
  const presence = d.enrolled ? (d.online ? 'online' : 'offline') : 'not enrolled';
  return `<tr data-device="${esc(d.name)}"${d.online ? '' : ' class="offline"'}>
  <td data-label="Name"><a href="/console/devices/${u(d.name)}">${esc(d.name)}</a></td>
  <td data-label="Status"><span data-presence class="badge ${d.online ? 'online' : 'offline'}">${esc(presence)}</span></td>
  <td data-label="Last seen">${d.online ? 'now' : when(d.lastSeen)}</td>
  <td data-label="Queued">${d.queued}${d.overdue ? ` ${badge(`${d.overdue} overdue`, 'overdue')}` : ''}</td>
  <td data-label="Agent">${esc(d.agentVersion ?? '—')}</td>
  <td data-label="Transport">${esc(d.transport ?? '—')}</td>
  <td data-label="Address">${esc(d.address ?? '—')}</td>
</tr>`;
}

function deviceFacts(d: DeviceView): string {
  const presence = d.enrolled ? (d.online ? 'online' : 'offline') : 'not enrolled';
  return `<dl class="facts" data-device="${esc(d.name)}">
  <dt>Status</dt><dd><span data-presence class="badge ${d.online ? 'online' : 'offline'}">${esc(presence)}</span></dd>
  <dt>Last seen</dt><dd>${d.online ? 'now' : when(d.lastSeen)}</dd>
  <dt>Queued</dt><dd>${d.queued}${d.overdue ? ` ${badge(`${d.overdue} overdue`, 'overdue')}` : ''}</dd>
  <dt>Agent version</dt><dd>${esc(d.agentVersion ?? '—')}</dd>
  <dt>Transport</dt><dd>${esc(d.transport ?? '—')}</dd>
  <dt>Address</dt><dd>${esc(d.address ?? '—')}</dd>
</dl>`;
}

export function devicesPage(csrf: string, devices: DeviceView[], after: number, notice?: string): string {
  // Also the answer to a removal (POST): the live script re-reads / then.
  const offline = devices.filter((d) => !d.online).length;
  const rows = devices.map(deviceRow).join('\n');
  return layout(
    { title: 'Devices', csrf, current: 'devices', liveUrl: '/', after },
    `<h1>Devices</h1>
${notice ? `<p class="notice" role="status">${esc(notice)}</p>` : ''}
<div id="devices-live" data-live>
<p>${devices.length} device${devices.length === 1 ? '' : 's'}, ${devices.length - offline} online, ${offline} offline.</p>
<div class="table-wrap">
<table class="stack">
<caption>Devices, offline and overdue first</caption>
<thead><tr><th scope="col">Name</th><th scope="col">Status</th><th scope="col">Last seen</th><th scope="col">Queued</th><th scope="col">Agent version</th><th scope="col">Transport</th><th scope="col">Address</th></tr></thead>
<tbody>
${rows || '<tr><td colspan="7">No devices yet: add one with <code>dropwire relay device add NAME</code>.</td></tr>'}
</tbody>
</table>
</div>
</div>`,
  );
}

export function devicePage(o: { csrf: string; after: number; device: DeviceView; messages: MessageRecord[]; next?: number; notice?: string; error?: string; enrollment?: { line: string; expiresAt: number } }): string {
  const d = o.device;
  const outcomes = new Map<string, number>();
  for (const m of o.messages) outcomes.set(m.status, (outcomes.get(m.status) ?? 0) + 1);
  const summary = [...outcomes].map(([s, n]) => `${badge(s)} ${n}`).join(' ');
  return layout(
    { title: d.name, csrf: o.csrf, current: 'devices', liveUrl: `/console/devices/${u(d.name)}`, after: o.after },
    `<h1>Device ${esc(d.name)}</h1>
${o.notice ? `<p class="notice" role="status">${esc(o.notice)}</p>` : ''}
${o.error ? `<p class="alert" role="alert">${esc(o.error)}</p>` : ''}
${
  o.enrollment
    ? `<section aria-labelledby="enroll-h"><h2 id="enroll-h">New enrollment token</h2>
<p>Run this on the host (once, before ${when(o.enrollment.expiresAt)}); the key the device had until now no longer works:</p>
<pre aria-label="init command">${esc(o.enrollment.line)}</pre></section>`
    : ''
}
<div id="device-live" data-live>
${deviceFacts(d)}
<h2>Outcomes of its latest messages</h2>
<p>${summary || 'No messages yet.'}</p>
${messageTable('Its latest messages', o.messages)}
${o.next !== undefined ? `<p><a href="/console/messages?device=${u(d.name)}&amp;before=${o.next}">Older messages of ${esc(d.name)}</a></p>` : ''}
</div>
<h2>Actions</h2>
<div class="actions">
<form method="post" action="/console/devices/${u(d.name)}/enroll">${csrfField(o.csrf)}<button type="submit">New enrollment token</button></form>
<form method="post" action="/console/devices/${u(d.name)}/remove">${csrfField(o.csrf)}
<label><span><input type="checkbox" name="confirm" value="yes" required> Remove ${esc(d.name)} and cancel its ${d.queued} queued message${d.queued === 1 ? '' : 's'}</span></label>
<button type="submit" class="danger">Remove device</button></form>
</div>`,
  );
}

// --- messages ------------------------------------------------------------------------------------

function outcome(m: MessageRecord): string {
  const r = m.result ?? {};
  const parts: string[] = [];
  if (r.exitCode !== undefined && r.exitCode !== null) parts.push(`exit ${esc(r.exitCode)}`);
  if (r.code) parts.push(esc(r.code));
  if (r.jobId) parts.push(`job ${esc(r.jobId)}`);
  if (r.savedAs) parts.push(`saved ${esc(r.savedAs)}`);
  return parts.join(', ');
}

function messageRow(m: MessageRecord): string {
  return `<tr>
  <td data-label="File"><a href="/console/messages/${u(m.id)}">${esc(m.filename)}</a></td>
  <td data-label="Status">${badge(m.status)}${m.overdue && !FINAL_STATUSES.has(m.status) ? ` ${badge('overdue')}` : ''}</td>
  <td data-label="Device"><a href="/console/devices/${u(m.to)}">${esc(m.to)}</a></td>
  <td data-label="Sender">${esc(m.from)}</td>
  <td data-label="Created">${when(m.createdAt)}</td>
  <td data-label="Outcome">${outcome(m)}</td>
</tr>`;
}

export function messageTable(caption: string, messages: MessageRecord[]): string {
  return `<div class="table-wrap"><table class="stack">
<caption>${esc(caption)}</caption>
<thead><tr><th scope="col">File</th><th scope="col">Status</th><th scope="col">Device</th><th scope="col">Sender</th><th scope="col">Created</th><th scope="col">Outcome</th></tr></thead>
<tbody>
${messages.map(messageRow).join('\n') || '<tr><td colspan="6">None.</td></tr>'}
</tbody></table></div>`;
}

export interface MessageFilters {
  device: string;
  sender: string;
  status: string;
  since: string;
  until: string;
  q: string;
}

export function messagesPage(o: { csrf: string; after?: number; filters: MessageFilters; attention: MessageRecord[]; messages: MessageRecord[]; next?: number; error?: string; older: boolean }): string {
  const f = o.filters;
  const options = ['', ...Object.values(MessageStatus)].map((s) => `<option value="${s}"${s === f.status ? ' selected' : ''}>${s || 'any'}</option>`).join('');
  const query = (extra: Record<string, string | number>) =>
    '?' + Object.entries({ ...f, ...extra }).filter(([, v]) => v !== '').map(([k, v]) => `${k}=${u(String(v))}`).join('&amp;');
  return layout(
    { title: 'Messages', csrf: o.csrf, current: 'messages', ...(o.after !== undefined ? { after: o.after } : {}) },
    `<h1>Messages</h1>
${o.error ? `<p class="alert" role="alert">${esc(o.error)}</p>` : ''}
<form class="filters" method="get" action="/console/messages" role="search" aria-label="Filter messages">
  <label for="f-q">Id or file name<input id="f-q" name="q" value="${esc(f.q)}"></label>
  <label for="f-device">Device<input id="f-device" name="device" value="${esc(f.device)}"></label>
  <label for="f-sender">Sender<input id="f-sender" name="sender" value="${esc(f.sender)}"></label>
  <label for="f-status">Status<select id="f-status" name="status">${options}</select></label>
  <label for="f-since">From (UTC)<input id="f-since" name="since" type="datetime-local" value="${esc(f.since)}"></label>
  <label for="f-until">Until (UTC)<input id="f-until" name="until" type="datetime-local" value="${esc(f.until)}"></label>
  <button type="submit">Filter</button> <a href="/console/messages">Clear</a>
</form>
<div id="messages-live" data-live>
${o.older ? '' : `<h2>Needs attention</h2>\n${messageTable('Failed, rejected and overdue messages', o.attention)}`}
<h2>${o.older ? 'Older messages' : 'All messages'}</h2>
${messageTable('Messages, newest first', o.messages)}
${o.next !== undefined ? `<p><a href="/console/messages${query({ before: o.next })}">Older messages</a></p>` : ''}
</div>`,
  );
}

const RESULT_FIELDS: Array<[string, string]> = [
  ['exitCode', 'Exit code'],
  ['signal', 'Signal'],
  ['code', 'Error code'],
  ['jobId', 'Print job id'],
  ['printer', 'Printer'],
  ['savedAs', 'Saved path'],
  ['durationMs', 'Duration (ms)'],
  ['timedOut', 'Timed out'],
  ['reason', 'Reason'],
];

export function messagePage(o: { csrf: string; after: number; message: MessageRecord; history: HistoryEntry[]; retryOf?: string; retriedAs?: string; notice?: string; error?: string; canCancel: boolean; canRetry: boolean }): string {
  const m = o.message;
  const r = m.result ?? {};
  const facts = RESULT_FIELDS.filter(([k]) => r[k] !== undefined && r[k] !== null).map(([k, label]) => `<dt>${label}</dt><dd>${esc(r[k])}</dd>`).join('');
  const output = typeof r.output === 'string' && r.output !== '' ? `<h3 id="output-h">Output (last part)</h3><pre aria-labelledby="output-h">${esc(r.output)}</pre>` : '';
  const timeline = o.history
    .map((h) => `<li>${when(h.at, true)} ${badge(h.status)}${h.detail ? ` <span class="muted">${esc(JSON.stringify(h.detail))}</span>` : ''}</li>`)
    .join('\n');
  return layout(
    { title: `Message ${m.filename}`, csrf: o.csrf, current: 'messages', liveUrl: `/console/messages/${u(m.id)}`, after: o.after },
    `<h1>Message ${esc(m.filename)}</h1>
${o.notice ? `<p class="notice" role="status">${esc(o.notice)}</p>` : ''}
${o.error ? `<p class="alert" role="alert">${esc(o.error)}</p>` : ''}
<div id="message-live" data-live>
<dl class="facts">
  <dt>Status</dt><dd>${badge(m.status)}${m.overdue && !FINAL_STATUSES.has(m.status) ? ` ${badge('overdue')}` : ''}</dd>
  <dt>Id</dt><dd><code>${esc(m.id)}</code></dd>
  <dt>Device</dt><dd><a href="/console/devices/${u(m.to)}">${esc(m.to)}</a></dd>
  <dt>Sender</dt><dd>${esc(m.from)}</dd>
  <dt>Size</dt><dd>${size(m.size)}</dd>
  <dt>Created</dt><dd>${when(m.createdAt)}</dd>
  ${o.retryOf ? `<dt>Retry of</dt><dd><a href="/console/messages/${u(o.retryOf)}">${esc(o.retryOf)}</a></dd>` : ''}
  ${o.retriedAs ? `<dt>Retried as</dt><dd><a href="/console/messages/${u(o.retriedAs)}">${esc(o.retriedAs)}</a></dd>` : ''}
</dl>
<section aria-labelledby="result-h"><h2 id="result-h">Result</h2>
${facts ? `<dl class="facts">${facts}</dl>` : '<p class="muted">No result reported yet.</p>'}
${output}
</section>
<section aria-labelledby="timeline-h"><h2 id="timeline-h">Timeline</h2>
<ol class="timeline">${timeline}</ol>
</section>
<div class="actions">
${o.canCancel ? `<form method="post" action="/console/messages/${u(m.id)}/cancel">${csrfField(o.csrf)}<button type="submit" class="danger">Cancel message</button></form>` : ''}
${o.canRetry ? `<form method="post" action="/console/messages/${u(m.id)}/retry">${csrfField(o.csrf)}<button type="submit">Retry message</button></form>` : ''}
</div>
</div>`,
  );
}

export function errorPage(csrf: string | undefined, status: number, code: string, message: string): string {
  return layout({ title: `Error ${status}`, ...(csrf ? { csrf } : {}) }, `<h1>${status}</h1><p class="alert" role="alert">${esc(message)} <code>${esc(code)}</code></p><p><a href="/">Back to the devices</a></p>`);
}
