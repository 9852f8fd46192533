/*
 * streamapp.js: follow one streamapp execution's stream, or many on one connection, from a
 * browser (SPEC §5, §5.6, §6).
 *
 * A classic script with no dependencies: <script src="/static/streamapp.js"></script>
 * defines window.streamapp.follow(url, options), which returns {close()}.
 *
 *   options.onEvent(envelope)        every durable event once, in order per execution:
 *                                    {id, type, ts, exec_id, kind, data}
 *   options.onText(text, envelope)   text chunks (llm_chunk): envelope is null in text mode
 *   options.onStatus(status, lastId) 'connecting', 'open', 'reconnecting', 'closed'
 *   options.ticket                   a function returning a stream ticket or a Promise of one,
 *                                    called for every new connection (cross-origin pages)
 *   options.lastEventId              resume after this id (a cursor token on /streams)
 *   options.events                   ['task_status', ...]: only these types (the stream's events=
 *                                    filter); custom types named here are listened for too
 *   options.types                    ['my_event', ...]: custom event types to listen for, unfiltered
 *   options.maxAttempts              connections in a row that may fail before giving up (10)
 *
 * Why a wrapper around EventSource: the catalog's `error` event and a failed connection
 * both arrive as "error"; after `complete` a bare EventSource reconnects only to get 204;
 * and on any status but 200 (an expired ticket's 401, 429, 503) it gives up for good.
 *
 * A URL of /api/v0/streams?ids=workflows/a,agents/b follows every listed execution on one
 * connection (SPEC §5.6): events are de-duplicated per execution, lastId is the cursor token,
 * and the follower closes once every listed execution has sent its terminal event. Resumed
 * from a saved token, it does not know which executions had ended before it: the server ends
 * the stream once the others have, and the follower gives up after maxAttempts.
 */
(function (global) {
  'use strict';

  var TYPES = ['workflow_start', 'workflow_status', 'agent_status', 'task_status', 'tool_call',
    'structured_delta', 'warning', 'complete', 'error', 'stream_reset', 'llm_chunk', 'message'];
  var TERMINAL = { complete: true, error: true };
  var MIN_DELAY_MS = 1000;
  var MAX_DELAY_MS = 30000;

  function parse(text) {
    try { return JSON.parse(text); } catch (e) { return undefined; }
  }

  // A JSON envelope of this type (SPEC §4), not text that happens to parse as JSON.
  function isEnvelope(value, type) {
    return value !== null && typeof value === 'object' && value.type === type && 'data' in value;
  }

  // Run a page's callback; what it throws is reported (asynchronously, to the console) but
  // never stops the stream half-way through its own bookkeeping.
  function call(callback, a, b) {
    if (!callback) return;
    try {
      callback(a, b);
    } catch (error) {
      setTimeout(function () { throw error; });
    }
  }

  // The SSE id as the application sees it: a number for a single execution's stream.
  function asId(cursor) {
    return cursor !== null && /^\d+$/.test(cursor) ? Number(cursor) : cursor;
  }

  // How many executions a multiplexed stream's URL lists (SPEC §5.6); 0 for one execution's stream.
  function listed(url) {
    var target = new URL(url, global.location.href);
    var ids = target.searchParams.get('ids');
    return /\/streams$/.test(target.pathname) && ids ? ids.split(',').length : 0;
  }

  function follow(url, options) {
    var opts = options || {};
    var many = listed(url); // a multiplexed stream: ids and terminal events count per execution
    var seenBy = {}; // exec_id -> newest envelope id delivered, when many
    var ended = {}; // exec_id -> true once its terminal event is delivered, when many
    var endedCount = 0;
    var cursor = opts.lastEventId == null ? null : String(opts.lastEventId); // last durable SSE id
    var seen = typeof asId(cursor) === 'number' ? asId(cursor) : null; // newest envelope id delivered
    var source = null;
    var timer = null;
    var closed = false;
    var failures = 0; // connections in a row that failed before opening
    var attempt = 0; // so a late ticket never opens a connection after close() or a newer attempt
    var maxAttempts = opts.maxAttempts == null ? 10 : opts.maxAttempts;
    var listen = TYPES.concat(opts.types || [], opts.events || []);

    function status(name) {
      call(opts.onStatus, name, asId(cursor));
    }

    function stop() {
      closed = true;
      attempt += 1;
      if (timer !== null) clearTimeout(timer);
      timer = null;
      if (source) source.close();
      source = null;
    }

    function connect() {
      var mine = ++attempt;
      var ticket = typeof opts.ticket === 'function' ? opts.ticket : function () { return opts.ticket; };
      Promise.resolve().then(ticket).then(function (value) {
        if (closed || mine !== attempt) return;
        // new URL() keeps any query the caller wrote and adds ours with & or ?, encoded.
        var target = new URL(url, global.location.href);
        if (value != null) target.searchParams.set('ticket', value);
        if (cursor !== null) target.searchParams.set('last_event_id', cursor);
        if (opts.events) target.searchParams.set('events', [].concat(opts.events).join(','));
        source = new EventSource(target.href);
        source.addEventListener('open', onOpen);
        for (var i = 0; i < listen.length; i++) source.addEventListener(listen[i], onFrame);
      }).catch(function () {
        // The ticket could not be had (the page's backend is down): count it as a failure.
        if (closed || mine !== attempt) return;
        failed();
      });
    }

    function onOpen(event) {
      if (closed || event.target !== source) return;
      failures = 0;
      status('open');
    }

    function onFrame(event) {
      if (closed || event.target !== source) return;
      // Only the catalog's `error` event carries data; a failed connection has none.
      if (event.type === 'error' && typeof event.data !== 'string') return onConnectionError();
      if (event.type === 'llm_chunk') return onChunk(event);
      var parsed = parse(event.data);
      if (event.type === 'stream_reset') {
        // The server restarts from its `id:` (SPEC §5 point 5): events after it are new to us.
        cursor = event.lastEventId;
        if (many) return onManyReset(parsed);
        seen = typeof asId(cursor) === 'number' ? asId(cursor) : seen;
        // Retention pruned an ended execution to its terminal id (SPEC §9): nothing follows,
        // and a reconnect would only be told 204.
        var pruned = parsed && parsed.reason === 'cursor_expired' && seen !== null && seen >= parsed.newest_id;
        deliver({ id: asId(cursor), type: 'stream_reset', data: parsed }, pruned);
        return;
      }
      if (many) return onManyFrame(event, parsed);
      var envelope = isEnvelope(parsed, event.type) ? parsed
        : { id: null, type: event.type, data: parsed === undefined ? event.data : parsed };
      if (typeof envelope.id === 'number') {
        if (seen !== null && envelope.id <= seen) return; // delivered already
        seen = envelope.id;
        cursor = event.lastEventId || String(envelope.id);
      }
      deliver(envelope, TERMINAL[event.type] === true);
    }

    // A multiplexed stream's frame: de-duplicated per execution; the stream is over once every
    // listed execution has sent its terminal event.
    function onManyFrame(event, parsed) {
      if (!isEnvelope(parsed, event.type) || typeof parsed.exec_id !== 'string') {
        return deliver({ id: null, type: event.type, data: parsed === undefined ? event.data : parsed }, false);
      }
      if (typeof parsed.id === 'number') {
        var newest = seenBy[parsed.exec_id];
        if (newest !== undefined && parsed.id <= newest) return; // delivered already
        seenBy[parsed.exec_id] = parsed.id;
        cursor = event.lastEventId || cursor;
      }
      deliver(parsed, TERMINAL[event.type] === true && end(parsed.exec_id));
    }

    // A multiplexed stream's reset names its execution (SPEC §5.6); its position restarts at
    // the id before the oldest event held, or at the newest when none is held.
    function onManyReset(data) {
      var execId = data && data.exec_id;
      if (typeof execId !== 'string') return;
      seenBy[execId] = data.oldest_id > 0 ? data.oldest_id - 1 : data.newest_id;
      // Retention pruned an ended execution to its terminal id: it has nothing more to send.
      var pruned = data.reason === 'cursor_expired' && data.oldest_id === 0;
      deliver({ id: asId(cursor), type: 'stream_reset', exec_id: execId, kind: data.kind, data: data },
        pruned && end(execId));
    }

    // Record that execution's end; whether every listed execution has ended now.
    function end(execId) {
      if (!ended[execId]) {
        ended[execId] = true;
        endedCount += 1;
      }
      return endedCount >= many;
    }

    // Text chunks have no `id:` and are never de-duplicated: event.lastEventId there is
    // still the last durable id (WHATWG), so it says nothing about the chunk itself.
    function onChunk(event) {
      var parsed = parse(event.data);
      if (isEnvelope(parsed, 'llm_chunk') && parsed.data && typeof parsed.data.content === 'string') {
        call(opts.onText, parsed.data.content, parsed);
      } else {
        call(opts.onText, event.data, null);
      }
    }

    function deliver(envelope, terminal) {
      // Close before the callback: the server ends the stream after a terminal event, and
      // a bare EventSource would reconnect only to be told 204 (CLIENTS.md).
      if (terminal) stop();
      call(opts.onEvent, envelope);
      if (terminal) status('closed');
    }

    function onConnectionError() {
      if (source.readyState === EventSource.CONNECTING) {
        // The stream ended (lifetime, restart, network): the browser reconnects by itself
        // after the server's `retry:` and sends Last-Event-ID. Let it.
        status('reconnecting');
        return;
      }
      // CLOSED: the browser gave up for good on a status other than 200 (401 on an expired
      // ticket, 429, 503, 500, 204) and cannot tell us which. Open a new EventSource with a
      // fresh ticket and last_event_id ourselves.
      source.close();
      source = null;
      failed();
    }

    function failed() {
      failures += 1;
      if (failures > maxAttempts) {
        // 404 and 204 look like any other failure from here; do not knock forever.
        stop();
        status('closed');
        return;
      }
      // Retry-After cannot be read through EventSource: back off 1, 2, 4 … 30 s, with
      // jitter so the clients of a restarted server do not all return at once.
      var delay = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * Math.pow(2, failures - 1));
      delay = delay / 2 + Math.random() * delay / 2;
      status('reconnecting');
      timer = setTimeout(function () {
        timer = null;
        connect();
      }, delay);
    }

    status('connecting');
    connect();
    return {
      close: function () {
        if (closed) return;
        stop();
        status('closed');
      }
    };
  }

  global.streamapp = { follow: follow };
})(window);
