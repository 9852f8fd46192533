/*
 * The development demo page (SPEC §6): signs in the development user, starts demo executions
 * and shows one stream at a time through streamapp.js. Event data only ever reaches the page
 * as textContent, never as HTML.
 */
(function () {
  'use strict';

  var $ = function (id) { return document.getElementById(id); };
  var ICONS = { PENDING: '○', RUNNING: '◐', PAUSED: '‖', SUCCESS: '✓', FAILED: '✗', CANCELED: '⊘', TIMED_OUT: '⧗' };
  var LOG_LIMIT = 300;
  var api = null; // the API prefix, from POST demo/session
  var stream = null;
  var generation = 0; // callbacks of a stream the page has moved on from are ignored
  var view = null; // what the current stream has shown: {steps: {task_id: li}, tools: {id: li}, text}

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  function announce(text) {
    $('announcer').textContent = text;
  }

  function showMessage(text) {
    $('message').textContent = text || '';
  }

  function request(method, path) {
    var init = { method: method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (method === 'POST') {
      // JSON, from our own origin: what the server's cross-site rule asks of cookie requests.
      init.headers['Content-Type'] = 'application/json';
      init.body = '{}';
    }
    return fetch(path, init).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (!response.ok) {
          var error = new Error(body.error ? body.error.message : 'HTTP ' + response.status);
          error.status = response.status;
          throw error;
        }
        return body;
      });
    });
  }

  // -- what the stream shows --------------------------------------------------------------

  function setStatus(value) {
    var badge = $('exec-status');
    if (badge.dataset.status === value) return;
    badge.dataset.status = value;
    badge.textContent = (ICONS[value] ? ICONS[value] + ' ' : '') + value;
    announce('Execution ' + value);
  }

  function connectionText(status, lastId) {
    if (status === 'connecting') return 'Connecting…';
    if (status === 'open') return 'Open';
    if (status === 'reconnecting') return 'Reconnecting (last id ' + (lastId == null ? 'none' : lastId) + ')';
    return 'Closed';
  }

  function onStatus(status, lastId) {
    var text = connectionText(status, lastId);
    if (status === 'closed' && view && !view.ended) text = 'Closed (gave up reconnecting)';
    $('connection').textContent = text;
    announce('Connection: ' + text);
  }

  function stepItem(taskId) {
    if (!view.steps[taskId]) {
      var li = el('li');
      var head = el('div', 'step-head');
      head.appendChild(el('span', 'icon'));
      head.appendChild(el('span', 'step-name', taskId));
      head.appendChild(el('span', 'step-status'));
      li.appendChild(head);
      li.appendChild(el('ul', 'tools'));
      addStep(li);
      view.steps[taskId] = li;
    }
    return view.steps[taskId];
  }

  function addStep(li) {
    $('steps').appendChild(li);
    $('steps-empty').hidden = true;
  }

  function setStep(taskId, status) {
    var li = stepItem(taskId);
    li.querySelector('.icon').textContent = ICONS[status] || '•';
    li.querySelector('.icon').setAttribute('aria-hidden', 'true');
    li.querySelector('.step-status').textContent = '— ' + status;
    view.currentStep = status === 'RUNNING' ? taskId : view.currentStep;
  }

  function setTool(data) {
    var li = view.tools[data.tool_call_id];
    if (!li) {
      li = el('li');
      view.tools[data.tool_call_id] = li;
      // A tool call belongs to the step running when it started, else to the execution.
      if (view.currentStep) {
        stepItem(view.currentStep).querySelector('.tools').appendChild(li);
      } else {
        addStep(li);
      }
    }
    var text = 'tool ' + data.tool_name + ' — ' + data.status;
    if (typeof data.duration_ms === 'number') text += ' (' + data.duration_ms + ' ms)';
    li.textContent = text;
  }

  function write(text) {
    var console = $('console');
    var atBottom = console.scrollHeight - console.scrollTop - console.clientHeight < 24;
    console.textContent += text;
    if (atBottom) console.scrollTop = console.scrollHeight;
  }

  function log(envelope) {
    var li = el('li');
    li.appendChild(el('span', 'id', envelope.id == null ? '' : '#' + envelope.id));
    li.appendChild(el('span', 'type', envelope.type));
    li.appendChild(document.createTextNode(JSON.stringify(envelope.data)));
    var list = $('log');
    list.appendChild(li);
    while (list.children.length > LOG_LIMIT) list.removeChild(list.firstChild);
    list.scrollTop = list.scrollHeight;
  }

  function onEvent(envelope) {
    var data = envelope.data || {};
    if (typeof envelope.id === 'number') $('last-id').textContent = String(envelope.id);
    log(envelope);
    switch (envelope.type) {
      case 'workflow_start':
        setStatus('PENDING');
        break;
      case 'workflow_status':
      case 'agent_status':
      case 'task_status':
        if (data.task_id) setStep(data.task_id, data.status); else setStatus(data.status);
        break;
      case 'tool_call':
        setTool(data);
        break;
      case 'warning':
        addStep(el('li', 'warning', '⚠ Warning: ' + data.message));
        break;
      case 'structured_delta':
        write(JSON.stringify(data.content) + '\n');
        break;
      case 'complete':
        view.ended = true;
        setStatus(data.status);
        if (typeof data.output === 'string') {
          // Text chunks are best-effort; `complete` carries the whole answer (SPEC §5.2).
          if ($('console').textContent !== data.output) $('console').textContent = data.output;
        } else if (data.output !== undefined) {
          write((view.text ? '\n' : '') + 'Output:\n' + JSON.stringify(data.output, null, 2) + '\n');
        }
        break;
      case 'error':
        view.ended = true;
        setStatus(data.status);
        addStep(el('li', 'failure', '✗ ' + data.status + ': ' + (data.error && data.error.message)));
        break;
      case 'stream_reset':
        write('[stream reset: ' + data.reason + ']\n');
        break;
    }
  }

  function onText(text) {
    view.text = true;
    write(text);
  }

  function follow(kind, execId, url) {
    var mine = ++generation;
    if (stream) stream.close();
    var only = function (callback) {
      return function (a, b) { if (mine === generation) callback(a, b); };
    };
    view = { steps: {}, tools: {}, currentStep: null, text: false, ended: false };
    $('steps').textContent = '';
    $('steps-empty').hidden = false;
    $('console').textContent = '';
    $('log').textContent = '';
    $('last-id').textContent = '–';
    $('execution').textContent = kind + ' ' + execId;
    var badge = $('exec-status');
    badge.dataset.status = '';
    badge.textContent = '–';
    stream = window.streamapp.follow(url, { onEvent: only(onEvent), onText: only(onText), onStatus: only(onStatus) });
  }

  // -- controls ---------------------------------------------------------------------------

  function start(path) {
    showMessage('');
    request('POST', path).then(function (started) {
      follow(started.kind, started.exec_id, started.stream_url);
    }, function (error) {
      showMessage('Could not start the demo: ' + error.message);
    });
  }

  function followTyped(event) {
    event.preventDefault();
    showMessage('');
    var segment = $('follow-kind').value;
    var execId = $('follow-id').value.trim();
    var path = api + '/executions/' + segment + '/' + encodeURIComponent(execId);
    // The document first: a stream of an unknown id would only fail again and again.
    request('GET', path).then(function (doc) {
      follow(doc.kind, doc.exec_id, doc.stream_url);
    }, function (error) {
      showMessage(error.status === 404 ? 'No execution ' + execId + ' of that kind (or not yours).' : error.message);
    });
  }

  request('POST', 'demo/session').then(function (session) {
    api = session.api;
    $('session').textContent = 'Signed in as ' + session.email + ' (development user)';
    ['run-workflow', 'run-agent', 'follow-button'].forEach(function (id) { $(id).disabled = false; });
  }, function (error) {
    $('session').textContent = 'Not signed in';
    showMessage(error.message);
  });
  $('run-workflow').addEventListener('click', function () { start('demo/workflow'); });
  $('run-agent').addEventListener('click', function () { start('demo/agent'); });
  $('follow-form').addEventListener('submit', followTyped);
})();
