// Follow one streamapp execution from Node (SPEC §5, §6) with the `eventsource` package.
//
//   STREAMAPP_TOKEN=sa_… node follow.js <stream-url> [--last-event-id N]
//
// Text chunks go to stdout as they come; every JSON event is one line, `#id type …`.
// Connection notes go to stderr. Exit codes: 0 complete (or already finished),
// 1 the execution ended with `error`, 2 usage, 3 the stream cannot be followed.
import { EventSource } from 'eventsource';

const USAGE = 'usage: STREAMAPP_TOKEN=… node follow.js <stream-url> [--last-event-id N]';
const MAX_WAIT_MS = 60_000; // give up when no connection opens for this long
// EventSource delivers only the event types you listen to: the catalog (SPEC §4), the
// stream's own `stream_reset` (§5.5) and `message`. Add your producers' own types here.
const TYPES = [
  'workflow_start', 'workflow_status', 'agent_status', 'task_status', 'tool_call',
  'structured_delta', 'warning', 'complete', 'error', 'llm_chunk', 'stream_reset', 'message',
];

function usage(message) {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

const args = process.argv.slice(2);
let url;
let lastId = null; // the newest durable id printed: the de-duplication and resume cursor
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--last-event-id') {
    if (!/^[0-9]+$/.test(args[++i] ?? '')) usage('--last-event-id needs a non-negative integer');
    lastId = Number(args[i]);
  } else if (!url && !args[i].startsWith('-')) {
    url = args[i];
  } else {
    usage(`unexpected argument: ${args[i]}`);
  }
}
if (!url) usage('missing <stream-url>');
if (!URL.canParse(url)) usage(`not a URL: ${url}`);
// The token comes from the environment, never argv (other users can read a process's argv).
const token = process.env.STREAMAPP_TOKEN;
if (!token) usage('set STREAMAPP_TOKEN to an API token with the read scope');

let source;
let retryAfter = null; // the Retry-After of the last 429/503
let problem = null; // the server's message for the last refused request
let midLine = false; // text chunks printed without a final newline
let downSince = null; // when the connection was lost, for MAX_WAIT_MS

function finish(code, note) {
  source.close(); // no reconnect, so no 204 round trip after the terminal event
  if (midLine) process.stdout.write('\n');
  if (note) console.error(note);
  process.exitCode = code;
}

function printLine(line) {
  process.stdout.write((midLine ? '\n' : '') + line + '\n');
  midLine = false;
}

// One readable line per durable event; data the line does not summarise is printed as JSON.
function describe({ id, type, data }) {
  const { status, task_id, tool_name, message, code, output, error, content, sequence, reason } = data;
  const parts = [`#${id}`, type];
  if (type === 'tool_call') parts.push(tool_name, status);
  else if (type === 'error') parts.push(status, `${error?.message ?? ''}${error?.code ? ` (${error.code})` : ''}`);
  else if (type === 'warning') parts.push(`${code}: ${message}`);
  else if (type === 'structured_delta') parts.push(`${sequence}`, JSON.stringify(content));
  else if (type === 'complete') parts.push(status, output === undefined ? '' : JSON.stringify(output));
  else if (status) parts.push(status, task_id ? `task ${task_id}` : '', reason ?? '');
  else parts.push(JSON.stringify(data));
  return parts.filter((part) => part !== '' && part !== undefined).join(' ');
}

function onFrame(event) {
  if (event.type === 'llm_chunk') {
    // Best-effort text without `id:` (SPEC §5.2): never de-duplicated, never a cursor.
    // JSON streams wrap it in an envelope: {"type":"llm_chunk","data":{"content":…}}.
    let text = event.data;
    try {
      const envelope = JSON.parse(text);
      if (envelope?.type === 'llm_chunk') text = envelope.data.content;
    } catch {} // plain text
    process.stdout.write(text);
    midLine = text !== '' && !text.endsWith('\n');
    return;
  }
  const id = Number(event.lastEventId);
  if (event.type === 'stream_reset') {
    // The cursor was ahead of the table or older than retention: start again from its id.
    const info = JSON.parse(event.data);
    printLine(`stream reset (${info.reason}): replaying after #${id}`);
    lastId = id;
    return;
  }
  if (event.lastEventId === '' || (lastId !== null && id <= lastId)) return; // seen already
  lastId = id;
  const envelope = JSON.parse(event.data);
  printLine(describe(envelope));
  if (envelope.type === 'complete') finish(0);
  else if (envelope.type === 'error') finish(1);
}

// A connection error: the package reconnects by itself (readyState CONNECTING) after a
// dropped stream, and gives up for good (CLOSED) on any answer but 200.
function onConnectionError(event) {
  if (source.readyState === EventSource.CONNECTING) {
    downSince ??= Date.now();
    if (Date.now() - downSince > MAX_WAIT_MS) {
      finish(3, `gave up: no connection for ${MAX_WAIT_MS / 1000} s (${event.message})`);
    } else {
      console.error(`reconnecting after #${lastId ?? 0}${event.message ? `: ${event.message}` : ''}`);
    }
  } else if (event.code === 204) {
    // The execution has ended and the cursor is at or past its terminal event (SPEC §5.4).
    finish(0, `already finished: nothing after #${lastId ?? 0}`);
  } else if (event.code === 429 || event.code === 503) {
    // Per-user or per-worker limit, or a worker shutting down: wait, then open a new one.
    const seconds = Number(retryAfter) || 5;
    console.error(`HTTP ${event.code}, retrying in ${seconds} s`);
    source.close();
    setTimeout(open, seconds * 1000);
  } else {
    // 401 bad token, 403, 404 unknown or not yours, 400 bad parameters.
    finish(3, `cannot follow: HTTP ${event.code ?? '?'} ${problem ?? event.message ?? ''}`.trim());
  }
}

function open() {
  source = new EventSource(url, {
    // The package sends headers only through its `fetch` option.
    fetch: async (input, init) => {
      const headers = { Authorization: `Bearer ${token}`, ...init.headers };
      // The package sends Last-Event-ID itself once it has seen an id; until then
      // (the first request, or a new EventSource) it is ours.
      if (!headers['Last-Event-ID'] && lastId !== null) headers['Last-Event-ID'] = String(lastId);
      const response = await fetch(input, { ...init, headers });
      retryAfter = response.headers.get('retry-after');
      problem = null;
      if (response.status >= 400) {
        problem = (await response.clone().json().catch(() => null))?.error?.message ?? null;
      }
      return response;
    },
  });
  source.addEventListener('open', () => {
    downSince = null;
    console.error(`connected after #${lastId ?? 0}`);
  });
  for (const type of TYPES) {
    source.addEventListener(type, (event) => {
      // The catalog's `error` event carries data; a connection error does not.
      if (type === 'error' && typeof event.data !== 'string') onConnectionError(event);
      else onFrame(event);
    });
  }
}

open();
