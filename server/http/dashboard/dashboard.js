// The coldfuse dashboard (served by coldfused; docs/operations.md, "Dashboard").
//
// Read-only. It asks once for a viewer token, keeps it in sessionStorage (never in a URL,
// localStorage or a cookie) and sends it as "Authorization: Bearer" to the JSON API:
//   /api/v1/status       every STATUS_EVERY_MS
//   /api/v1/rounds       when status.change_seq changes
//   /api/v1/evaluations  when change_seq changes, and at least every EVALS_EVERY_MS
// Everything the server sends (contributor names, tasks, reasons) is untrusted: it only
// ever reaches the page as textContent, never as HTML. The Content-Security-Policy allows
// no inline script or style, so all behaviour is here and all styling in dashboard.css.
'use strict';

(() => {
  const TOKEN_KEY = 'coldfuse.viewer_token';
  const STATUS_EVERY_MS = 2000;
  const EVALS_EVERY_MS = 10000;
  // Distinct, colour-blind-friendly line colours (Okabe–Ito, then Tol's).
  const PALETTE = ['#0072B2', '#D55E00', '#009E73', '#CC79A7', '#E69F00', '#56B4E9',
    '#882255', '#117733', '#332288', '#999933', '#AA4499', '#44AA99'];

  const $ = (id) => document.getElementById(id);

  // An element with text content (never HTML) and optional class / title / data-*.
  function el(tag, opts = {}, ...children) {
    const e = document.createElement(tag);
    if (opts.className) e.className = opts.className;
    if (opts.text !== undefined && opts.text !== null) e.textContent = String(opts.text);
    if (opts.title) e.title = String(opts.title);
    if (opts.data) {
      for (const [k, v] of Object.entries(opts.data)) e.dataset[k] = String(v);
    }
    for (const c of children) {
      if (c !== null && c !== undefined) e.append(c);  // strings become text nodes
    }
    return e;
  }

  function setText(id, text, title) {
    const e = $(id);
    e.textContent = String(text);
    if (title !== undefined) e.title = String(title);
  }

  // ------------------------------------------------------------------ formatting

  const num = (v) => (v === undefined || v === null || v === '' ? 0 : Number(v));

  function humanBytes(n) {
    n = num(n);
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + ' ' + units[i];
  }

  function humanDuration(ms) {
    ms = Math.max(0, Math.round(num(ms)));
    if (ms < 1000) return ms + ' ms';
    const s = ms / 1000;
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min ' + Math.round(s - m * 60) + ' s';
    const h = Math.floor(m / 60);
    return h + ' h ' + (m - h * 60) + ' min';
  }

  function clockTime(unixMs) {
    const d = new Date(num(unixMs));
    const pad = (x) => String(x).padStart(2, '0');
    const today = new Date();
    const time = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
    if (d.toDateString() === today.toDateString()) return time;
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + time;
  }

  // proto3 JSON bytes are base64.
  function base64ToHex(b64) {
    if (!b64) return '';
    try {
      const raw = atob(b64);
      let hex = '';
      for (let i = 0; i < raw.length; i++) hex += raw.charCodeAt(i).toString(16).padStart(2, '0');
      return hex;
    } catch (e) {
      return '';
    }
  }

  // "v1, v3–v5" from [1, 3, 4, 5].
  function versionRanges(list) {
    const v = (list || []).map(num).sort((a, b) => a - b);
    if (v.length === 0) return 'none';
    const parts = [];
    let start = v[0];
    let prev = v[0];
    for (let i = 1; i <= v.length; i++) {
      if (i < v.length && v[i] === prev + 1) {
        prev = v[i];
        continue;
      }
      parts.push(start === prev ? 'v' + start : 'v' + start + '–v' + prev);
      if (i < v.length) {
        start = v[i];
        prev = v[i];
      }
    }
    return parts.join(', ');
  }

  const FUSION_NAMES = {
    MEAN: 'mean',
    EXAMPLE_WEIGHTED_MEAN: 'example-weighted mean',
    COORDINATE_MEDIAN: 'coordinate-wise median',
    TRIMMED_MEAN: 'trimmed mean',
    NORM_CLIPPED_MEAN: 'norm-clipped mean',
    TASK_ARITHMETIC: 'task arithmetic',
    TIES: 'TIES merging',
    DARE: 'DARE merging',
  };

  // "Nesterov (lr 0.7, momentum 0.9)": the outer optimizer and its resolved options.
  const outerName = (kind, o) => {
    const name = {OUTER_SGD: 'SGD', OUTER_NESTEROV: 'Nesterov', OUTER_ADAM: 'Adam',
      OUTER_YOGI: 'Yogi'}[kind] || kind;
    const parts = [['learning_rate', 'lr'], ['momentum', 'momentum'], ['beta1', 'β1'],
      ['beta2', 'β2'], ['tau', 'τ']]
      .filter(([k]) => o[k] !== undefined).map(([k, label]) => `${label} ${o[k]}`);
    if (o.bias_correction) parts.push('bias-corrected');
    return parts.length ? `${name} (${parts.join(', ')})` : name;
  };

  const fmtScore = (v) => (Number.isFinite(v) ? v.toFixed(4) : String(v));
  const fmtMetric = (v) => {
    v = Number(v);
    if (!Number.isFinite(v)) return String(v);
    return Number.isInteger(v) ? String(v) : v.toFixed(3);
  };

  // ["accuracy 0.412 → 0.913", "train_loss 1.02 → 0.31", "lr 0.001"] from
  // {accuracy_before, accuracy_after, train_loss_first, train_loss_last, lr}.
  const PAIRS = [['_before', '_after'], ['_first', '_last']];
  function metricsLines(metrics) {
    const m = metrics || {};
    const out = [];
    const done = new Set();
    for (const k of Object.keys(m).sort()) {
      if (done.has(k)) continue;
      let paired = false;
      for (const [a, b] of PAIRS) {
        const stem = k.endsWith(a) ? k.slice(0, -a.length) : k.endsWith(b) ? k.slice(0, -b.length) : null;
        if (stem !== null && (stem + a) in m && (stem + b) in m) {
          out.push(stem + ' ' + fmtMetric(m[stem + a]) + ' → ' + fmtMetric(m[stem + b]));
          done.add(stem + a);
          done.add(stem + b);
          paired = true;
          break;
        }
      }
      if (!paired) {
        out.push(k + ' ' + fmtMetric(m[k]));
        done.add(k);
      }
    }
    // The paper's numbers first: accuracy, then the other scores, then losses.
    const rank = (line) => (line.startsWith('accuracy') ? 0 : line.includes('loss') ? 2 : 1);
    return out.sort((x, y) => rank(x) - rank(y));
  }

  // ------------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(httpStatus, code, message) {
      super(message);
      this.httpStatus = httpStatus;
      this.code = code;
    }
  }

  async function apiGet(path, token) {
    let resp;
    try {
      resp = await fetch(path, {
        headers: { Authorization: 'Bearer ' + token, Accept: 'application/json' },
        cache: 'no-store',
        credentials: 'omit',
        redirect: 'error',
      });
    } catch (e) {
      throw new ApiError(0, 'UNAVAILABLE', 'cannot reach the server (' + e.message + ')');
    }
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    if (!resp.ok) {
      const err = (body && body.error) || {};
      throw new ApiError(resp.status, err.code || 'HTTP ' + resp.status, err.message || resp.statusText);
    }
    if (body === null) throw new ApiError(resp.status, 'INTERNAL', 'the server sent no JSON');
    return body;
  }

  const isRefusal = (e) => e instanceof ApiError && (e.httpStatus === 401 || e.httpStatus === 403);

  function refusalText(e) {
    const why = e.httpStatus === 403
      ? 'This token may not read the dashboard (it needs a viewer, evaluator or operator token).'
      : 'The server did not accept this token (wrong, revoked or expired).';
    return why + ' Server said: ' + e.code + ': ' + e.message;
  }

  // ------------------------------------------------------------------ session

  const session = {
    generation: 0,   // bumped on sign-in/out: a stale poll drops its results
    timer: null,
    status: null,
    rounds: null,
    evals: null,
    roundsSeq: null,
    evalsAt: 0,
  };

  function getToken() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function showLogin(message) {
    $('dashboard').hidden = true;
    $('sign-out').hidden = true;
    $('connection').hidden = true;
    $('security').hidden = true;
    $('login').hidden = false;
    const err = $('login-error');
    err.textContent = message || '';
    err.hidden = !message;
    const input = $('token-input');
    input.value = '';
    input.focus();
  }

  function stopPolling() {
    session.generation++;
    if (session.timer !== null) clearTimeout(session.timer);
    session.timer = null;
    session.status = session.rounds = session.evals = null;
    session.roundsSeq = null;
    session.evalsAt = 0;
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    stopPolling();
    showLogin(message);
  }

  function startDashboard() {
    stopPolling();
    $('login').hidden = true;
    $('dashboard').hidden = false;
    $('sign-out').hidden = false;
    const gen = session.generation;
    poll(gen);
  }

  async function onLogin(event) {
    event.preventDefault();
    const input = $('token-input');
    const token = input.value.trim();
    if (!token) return;
    const button = $('login-submit');
    button.disabled = true;
    $('login-error').hidden = true;
    try {
      // Try the token before keeping it.
      await apiGet('/api/v1/status', token);
      sessionStorage.setItem(TOKEN_KEY, token);
      input.value = '';
      startDashboard();
    } catch (e) {
      showLogin(isRefusal(e) ? refusalText(e) : 'Could not sign in: ' + e.code + ': ' + e.message);
    } finally {
      button.disabled = false;
    }
  }

  function setConnection(ok, text) {
    const c = $('connection');
    c.hidden = false;
    c.textContent = text;
    c.classList.toggle('bad', !ok);
    c.dataset.state = ok ? 'live' : 'error';
  }

  async function poll(gen) {
    const token = getToken();
    if (gen !== session.generation || !token) return;
    try {
      const status = await apiGet('/api/v1/status', token);
      if (gen !== session.generation) return;
      const seq = String(status.change_seq);
      const now = Date.now();
      const needRounds = session.rounds === null || seq !== session.roundsSeq;
      const needEvals = session.evals === null || needRounds || now - session.evalsAt >= EVALS_EVERY_MS;
      const [rounds, evals] = await Promise.all([
        needRounds ? apiGet('/api/v1/rounds', token) : null,
        needEvals ? apiGet('/api/v1/evaluations', token) : null,
      ]);
      if (gen !== session.generation) return;
      session.status = status;
      renderStatus(status);
      if (rounds !== null) {
        session.rounds = rounds.rounds || [];
        session.roundsSeq = seq;
        renderRounds(status, session.rounds);
      }
      if (evals !== null) {
        session.evals = evals.evaluations || [];
        session.evalsAt = now;
        renderEvaluations(session.evals, status);
      }
      setConnection(true, 'live · ' + clockTime(now));
      setText('updated', clockTime(now));
      setText('change-seq', seq);
      document.body.dataset.changeSeq = seq;
    } catch (e) {
      if (gen !== session.generation) return;
      if (isRefusal(e)) {
        signOut('Signed out: ' + refusalText(e));
        return;
      }
      setConnection(false, 'reconnecting… (' + e.message + ')');
    }
    session.timer = setTimeout(() => poll(gen), STATUS_EVERY_MS);
  }

  // ------------------------------------------------------------------ rendering

  function renderStatus(s) {
    const model = s.model || {};
    const initialized = Boolean(s.initialized);
    $('not-initialized').hidden = initialized;

    setText('model-spec', model.model_spec || '–');
    const outer = model.outer_optimizer && model.outer_optimizer !== 'OUTER_PLAIN'
      ? ` + ${outerName(model.outer_optimizer, model.outer_optimizer_options || {})}` : '';
    setText('fusion-method',
      (FUSION_NAMES[model.fusion_method] || model.fusion_method || '–') + outer,
      [model.fusion_method, model.outer_optimizer].filter(Boolean).join(', '));
    const tensors = ((model.manifest || {}).tensors || []).length;
    setText('model-size', initialized
      ? humanBytes(model.total_bytes) + ' in ' + tensors + ' shared tensor' + (tensors === 1 ? '' : 's')
      : '–', num(model.total_bytes) + ' bytes');
    setText('transport', s.insecure ? 'INSECURE: no TLS, no tokens (--insecure)' : 'TLS and tokens');
    $('transport').classList.toggle('danger', Boolean(s.insecure));
    const sec = $('security');
    sec.hidden = false;
    sec.textContent = s.insecure ? 'insecure' : 'TLS';
    sec.classList.toggle('danger', Boolean(s.insecure));

    const bad = (s.bad_base_versions || []).map(num);
    setText('base-version', initialized ? 'v' + num(s.base_version) : '–');
    const hex = base64ToHex(s.base_sha256);
    setText('base-sha', hex ? hex.slice(0, 16) + '…' : '–', hex);
    setText('bad-bases', bad.length ? versionRanges(bad) + ' (rolled back)' : 'none');

    const round = s.open_round;
    const need = Math.max(1, num(s.min_contributions));
    if (round && initialized) {
      const contributions = round.contributions || [];
      setText('round-number', num(round.number));
      setText('round-progress', contributions.length + ' / ' + need);
      const bar = $('round-progress-bar');
      bar.max = need;
      bar.value = Math.min(contributions.length, need);
      setText('round-base', 'v' + num(round.base_version));
      const timeout = num(s.round_timeout_ms);
      if (timeout > 0) {
        const deadline = num(round.opened_unix_ms) + timeout;
        const left = deadline - num(s.server_time_unix_ms);
        // Shown in this browser's clock, corrected by the server's (they may differ).
        const local = deadline - num(s.server_time_unix_ms) + Date.now();
        setText('round-deadline', clockTime(local) + (left > 0
          ? ' (in ' + humanDuration(left) + ')'
          : ' (due: closes with what it has)'),
        'opened ' + clockTime(num(round.opened_unix_ms) - num(s.server_time_unix_ms) + Date.now()) +
          ', timeout ' + humanDuration(timeout));
      } else {
        setText('round-deadline', 'no deadline (closes only at quorum)');
      }
      const list = $('round-contributors');
      list.replaceChildren(...contributions.map(contributionChip));
      if (contributions.length === 0) list.replaceChildren(el('li', { className: 'muted', text: 'no contributions yet' }));
    } else {
      setText('round-number', '');
      setText('round-progress', '–');
      setText('round-deadline', '–');
      setText('round-base', '–');
      $('round-progress-bar').value = 0;
      $('round-contributors').replaceChildren();
    }

    const sp = s.staleness || {};
    const maxStale = num(sp.max_staleness);
    const exponent = num(sp.staleness_exponent);
    setText('staleness-policy', !initialized ? '–' : maxStale === 0
      ? 'synchronous: only from the current base'
      : 'up to ' + maxStale + (maxStale === 1 ? ' fusion' : ' fusions') + ' old' +
        (exponent > 0 ? ', weight (1 + s)^−' + exponent : ', not down-weighted'),
    'bases a contribution may be trained from now: ' +
      ((sp.accepted_base_versions || []).map((v) => 'v' + num(v)).join(', ') || 'none'));

    const st = s.storage || {};
    setText('storage-disk', humanBytes(st.disk_bytes),
      st.disk_usage_unix_ms ? 'measured ' + clockTime(st.disk_usage_unix_ms) : '');
    const stored = st.stored_base_versions || [];
    setText('storage-stored', stored.length + ' (' + versionRanges(stored) + ')');
    setText('storage-pinned', versionRanges(st.pinned_base_versions));
    const keepBases = num(st.keep_bases);
    const keepRounds = num(st.keep_contribution_rounds);
    setText('storage-retention',
      (keepBases === 0 ? 'all bases' : 'newest ' + keepBases + ' bases') + '; ' +
      (keepRounds < 0 ? 'all contributions' : 'contributions of the last ' + keepRounds + ' rounds'));
  }

  // "stale 2 (×0.58)" for a contribution trained from an older base than its round's.
  function staleness(c) {
    const s = num(c.staleness);
    if (s === 0) return null;
    const w = c.staleness_weight === undefined ? 1 : num(c.staleness_weight);
    return { text: 'stale ' + s + (w !== 1 ? ' (×' + w.toFixed(2) + ')' : ''),
      title: 'trained from base v' + num(c.trained_from_base) + ', ' + s +
        (s === 1 ? ' fusion' : ' fusions') + ' older than its round\'s; its change is weighted ' + w.toFixed(3) };
  }

  // One contribution as a chip: who, the task, and whether it was stale or quarantined.
  function contributionChip(c) {
    const quarantined = c.state === 'QUARANTINED';
    const stale = staleness(c);
    const titles = [];
    if (quarantined) titles.push('quarantined (not fused): ' + c.quarantine_reason);
    if (c.task) titles.push('task ' + c.task);
    if (stale) titles.push(stale.title);
    return el('li', {
      className: 'chip' + (quarantined ? ' quarantined' : '') + (stale ? ' stale' : ''),
      title: titles.join('; '),
      data: { contributor: c.contributor, staleness: num(c.staleness) },
    }, el('span', { className: 'who', text: c.contributor }),
    c.task ? el('span', { className: 'task', text: c.task }) : null,
    stale ? el('span', { className: 'stale-mark', text: stale.text }) : null);
  }

  function contributorCell(contributions) {
    const ul = el('ul', { className: 'chips' });
    for (const c of contributions) ul.append(contributionChip(c));
    return ul;
  }

  function renderRounds(status, rounds) {
    const bad = new Set((status.bad_base_versions || []).map(num));
    const closed = rounds.filter((r) => r.state === 'CLOSED').sort((a, b) => num(b.number) - num(a.number));
    const body = $('history').tBodies[0];
    body.replaceChildren(...closed.map((r) => {
      const result = num(r.result_base_version);
      const fused = r.close_reason !== 'rollback' && result > 0;
      const isBad = fused && bad.has(result);
      const baseCell = el('td', { className: 'base', data: { testid: 'history-base' } },
        'v' + num(r.base_version) + ' → ',
        fused ? el('strong', { text: 'v' + result }) : el('span', { className: 'muted', text: 'not fused' }),
        isBad ? el('span', { className: 'badge danger', text: 'bad', title: 'rolled back: never served as current' }) : null);
      const tr = el('tr', {
        className: isBad ? 'bad-base' : '',
        data: { round: num(r.number), resultBase: fused ? result : '', bad: isBad },
      },
      el('td', { text: num(r.number) }),
      baseCell,
      el('td', { text: r.close_reason || '–', title: 'closed ' + clockTime(r.closed_unix_ms) }),
      el('td', {
        className: 'num',
        text: !fused ? '–' : num(r.fusion_duration_ms) === 0 ? '< 1 ms' : humanDuration(r.fusion_duration_ms),
      }),
      el('td', {}, contributorCell(r.contributions || []),
        r.contributions_pruned ? el('span', { className: 'muted small', text: 'tensors pruned' }) : null));
      return tr;
    }));
    $('no-history').hidden = closed.length > 0;

    // Each contributor's newest contribution, over every round (the open one included).
    const last = new Map();
    const ascending = rounds.slice().sort((a, b) => num(a.number) - num(b.number));
    for (const r of ascending) {
      for (const c of r.contributions || []) {
        const prev = last.get(c.contributor);
        if (!prev || num(r.number) > num(prev.round.number) ||
            (num(r.number) === num(prev.round.number) && num(c.received_unix_ms) >= num(prev.c.received_unix_ms))) {
          last.set(c.contributor, { round: r, c });
        }
      }
    }
    const rows = [...last.values()].sort((a, b) => a.c.contributor.localeCompare(b.c.contributor));
    $('contributors').tBodies[0].replaceChildren(...rows.map(({ round, c }) => {
      const quarantined = c.state === 'QUARANTINED';
      const stateCell = el('td', {},
        el('span', {
          className: 'badge ' + (quarantined ? 'danger' : 'ok'),
          text: quarantined ? 'quarantined' : (c.state || '').toLowerCase(),
        }),
        quarantined && c.quarantine_reason ? el('div', { className: 'small reason', text: c.quarantine_reason }) : null);
      const stale = staleness(c);
      return el('tr', { data: { contributor: c.contributor } },
        el('td', { className: 'who', text: c.contributor }),
        el('td', {
          className: 'nowrap',
          text: num(round.number) + (round.state === 'OPEN' ? ' (open)' : ''),
          title: 'received ' + clockTime(c.received_unix_ms) + '; trained from base v' +
            num(c.trained_from_base),
        }, stale ? el('div', { className: 'small stale-mark', text: stale.text, title: stale.title })
          : null),
        el('td', { className: 'task', text: c.task || '–' }),
        el('td', { className: 'num', text: num(c.num_examples) }),
        el('td', { className: 'metrics' }, ...metricsLines(c.metrics).map((line) => el('div', { text: line }))),
        stateCell);
    }));
    $('no-contributors').hidden = rows.length > 0;
  }

  // One line per (task, metric, num_train_examples); x = base version. Where several
  // evaluators scored the same point, the newest recorded score is drawn.
  function seriesOf(evaluations) {
    const series = new Map();
    for (const e of evaluations) {
      const task = e.task;
      const metric = e.metric;
      const k = num(e.num_train_examples);
      const key = JSON.stringify([task, metric, k]);
      if (!series.has(key)) series.set(key, { task, metric, k, points: new Map() });
      const s = series.get(key);
      const x = num(e.base_version);
      const prev = s.points.get(x);
      if (!prev || num(e.recorded_unix_ms) >= num(prev.recorded_unix_ms)) {
        s.points.set(x, { x, y: Number(e.value), seen: Boolean(e.task_seen), recorded_unix_ms: e.recorded_unix_ms });
      }
    }
    const list = [...series.values()].map((s) => {
      const points = [...s.points.values()].sort((a, b) => a.x - b.x);
      // A task is "seen" once a contribution on it has been fused: judged at its newest base.
      const seen = points.length > 0 && points[points.length - 1].seen;
      return { ...s, points, seen };
    });
    list.sort((a, b) => (a.seen === b.seen ? 0 : a.seen ? -1 : 1) ||
      a.task.localeCompare(b.task) || a.metric.localeCompare(b.metric) || a.k - b.k);
    return list;
  }

  function lineLabel(s) {
    return s.task + ' · ' + s.metric + (s.k > 0 ? ' · k=' + s.k : '') + (s.seen ? '' : ' (unseen)');
  }

  let chart = null;

  function renderEvaluations(evaluations, status) {
    const list = seriesOf(evaluations);
    const datasets = list.map((s, i) => {
      const color = PALETTE[i % PALETTE.length];
      return {
        label: lineLabel(s),
        data: s.points.map((p) => ({ x: p.x, y: p.y })),
        // Read by people (legend, tooltips) and by the browser test.
        task: s.task,
        metric: s.metric,
        numTrainExamples: s.k,
        seen: s.seen,
        borderColor: color,
        backgroundColor: s.seen ? color : '#ffffff',
        borderDash: s.seen ? [] : [6, 4],
        borderWidth: 2,
        pointStyle: s.seen ? 'circle' : 'rectRot',
        pointRadius: 4,
        pointHoverRadius: 6,
        tension: 0,
      };
    });
    if (typeof Chart === 'undefined') {
      $('chart').dataset.error = 'Chart.js did not load';
    } else if (chart === null) {
      chart = new Chart($('chart'), {
        type: 'line',
        data: { datasets },
        options: {
          animation: false,
          responsive: true,
          maintainAspectRatio: false,
          interaction: { mode: 'nearest', intersect: false },
          scales: {
            x: {
              type: 'linear',
              title: { display: true, text: 'base version' },
              ticks: { stepSize: 1, precision: 0, callback: (v) => (Number.isInteger(v) ? 'v' + v : '') },
            },
            y: { title: { display: true, text: 'score' } },
          },
          plugins: {
            legend: { position: 'bottom', labels: { usePointStyle: true, boxHeight: 7 } },
            tooltip: {
              callbacks: {
                title: (items) => (items.length ? 'base v' + items[0].parsed.x : ''),
                label: (item) => item.dataset.label + ': ' + fmtScore(item.parsed.y),
              },
            },
          },
        },
      });
    } else {
      chart.data.datasets = datasets;
      chart.update('none');
    }
    $('chart').dataset.lines = String(datasets.length);

    const bad = new Set((status.bad_base_versions || []).map(num));
    const body = $('latest-scores').tBodies[0];
    body.replaceChildren(...list.map((s, i) => {
      const first = s.points[0];
      const latest = s.points[s.points.length - 1];
      const delta = latest.y - first.y;
      const swatch = el('span', { className: 'swatch' + (s.seen ? '' : ' dashed') });
      swatch.style.borderColor = PALETTE[i % PALETTE.length];  // CSSOM, allowed by the CSP
      return el('tr', { data: { task: s.task, seen: s.seen } },
        el('td', {}, swatch, el('span', { text: s.task }),
          s.seen ? null : el('span', { className: 'badge unseen', text: 'unseen' })),
        el('td', { text: s.metric }),
        el('td', { className: 'num', text: s.k }),
        el('td', { text: 'v' + latest.x + (bad.has(latest.x) ? ' (bad)' : '') }),
        el('td', { className: 'num', text: fmtScore(latest.y) }),
        el('td', {
          className: 'num nowrap ' + (s.points.length < 2 ? '' : delta >= 0 ? 'up' : 'down'),
          text: s.points.length < 2 ? '–' : (delta >= 0 ? '+' : '') + delta.toFixed(4) + ' (v' + first.x + ')',
          title: s.points.length < 2 ? '' : 'since base v' + first.x + ' (' + fmtScore(first.y) + ')',
        }));
    }));
    $('no-evals').hidden = list.length > 0;
  }

  // ------------------------------------------------------------------ start

  function init() {
    $('login-form').addEventListener('submit', onLogin);
    $('sign-out').addEventListener('click', () => signOut('Signed out.'));
    // A token that reached the URL (it never should) is not used, and is removed.
    if (location.search || location.hash) history.replaceState(null, '', location.pathname);
    if (getToken()) {
      startDashboard();
    } else {
      showLogin('');
    }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', init);
  } else {
    init();
  }
})();
