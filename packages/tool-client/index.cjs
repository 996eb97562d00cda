'use strict';
// @baton/tool-client: lets a tool spawned by `baton run` talk back to the runner.
//
// Protocol: crates/baton-protocol/src/tool.rs (newline-delimited JSON over the Unix socket
// named by BATON_IPC, `hello` first, env values as base64 bytes).
//
// Node has no synchronous socket API, so the calls here are made synchronous like this: a
// worker thread owns the socket (plain `net`); the main thread posts it one request line,
// blocks in `Atomics.wait` on a SharedArrayBuffer cell, and once the worker has posted the
// answer on a MessageChannel and flipped the cell, takes it with `receiveMessageOnPort`.
//
// This one file is both the npm package's entry point and the module Baton points
// VP_RUN_NODE_CLIENT_PATH at (its `load()` is the @voidzero-dev/vite-task-client contract).
// It has no dependencies and needs only Node's built-ins.

const PROTOCOL_VERSION = 1;
// How long one request may take before the call gives up (the runner answers at once; this
// only guards against a worker that died).
const REQUEST_TIMEOUT_MS = 60000;

const WORKER_SOURCE = `
'use strict';
const { workerData, parentPort } = require('node:worker_threads');
const net = require('node:net');
const cell = new Int32Array(workerData.cell);
const port = workerData.port;
let waiting = false;
let failure = null;
let pending = '';
function answer(msg) {
  waiting = false;
  port.postMessage(msg);
  Atomics.store(cell, 0, 1);
  Atomics.notify(cell, 0);
}
function fail(message) {
  if (failure === null) failure = message;
  if (waiting) answer({ error: failure });
}
let socket;
try {
  socket = net.createConnection(workerData.socketPath);
} catch (e) {
  fail(String(e && e.message));
}
if (socket) {
  socket.setEncoding('utf8');
  socket.on('data', (chunk) => {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf('\\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (waiting) answer({ line });
    }
  });
  socket.on('error', (e) => fail(String(e && e.message)));
  socket.on('close', () => fail('connection closed by the runner'));
}
parentPort.on('message', (line) => {
  if (failure !== null) return answer({ error: failure });
  waiting = true;
  socket.write(line);
});
`;

let connection; // undefined: not tried yet; null: unusable; else { worker, port, cell, nextId }
let warned = false;

class TransportError extends Error {}

function warnOnce(message) {
  if (warned) return;
  warned = true;
  process.stderr.write(`@baton/tool-client: ${message}; continuing without the runner\n`);
}

/** Whether this process runs under `baton run` (BATON_IPC is set). */
function inBaton() {
  return Boolean(process.env.BATON_IPC);
}

function connect() {
  if (connection !== undefined) return connection;
  connection = null;
  const socketPath = process.env.BATON_IPC;
  if (!socketPath) return null;
  const { Worker, MessageChannel } = require('node:worker_threads');
  const cell = new SharedArrayBuffer(4);
  const { port1, port2 } = new MessageChannel();
  const worker = new Worker(WORKER_SOURCE, {
    eval: true,
    workerData: { socketPath, cell, port: port2 },
    transferList: [port2],
  });
  worker.unref();
  if (typeof port1.unref === 'function') port1.unref();
  const conn = { worker, port: port1, cell: new Int32Array(cell), nextId: 1 };
  try {
    roundTrip(conn, { op: 'hello', version: PROTOCOL_VERSION, client: '@baton/tool-client' });
  } catch (e) {
    worker.terminate();
    throw e;
  }
  connection = conn;
  return conn;
}

function roundTrip(conn, request) {
  const { receiveMessageOnPort } = require('node:worker_threads');
  const id = conn.nextId++;
  Atomics.store(conn.cell, 0, 0);
  conn.worker.postMessage(`${JSON.stringify({ id, ...request })}\n`);
  if (Atomics.wait(conn.cell, 0, 0, REQUEST_TIMEOUT_MS) === 'timed-out') {
    throw new TransportError('no answer from the runner');
  }
  const received = receiveMessageOnPort(conn.port);
  if (!received) throw new TransportError('lost the answer from the runner');
  const msg = received.message;
  if (msg.error !== undefined) throw new TransportError(msg.error);
  const response = JSON.parse(msg.line);
  if (response.error) {
    const err = new Error(`baton rejected ${request.op}: ${response.error.message}`);
    err.code = response.error.code;
    throw err;
  }
  if (response.id !== id) throw new TransportError(`answer for request ${response.id}, expected ${id}`);
  return response.result;
}

// Sends `request`; returns its result, or `undefined` outside Baton or when the runner cannot
// be reached (then warns once on stderr). Errors the runner answers with are thrown.
function request(req) {
  let conn;
  try {
    conn = connect();
    if (!conn) return undefined;
    return roundTrip(conn, req);
  } catch (e) {
    if (!(e instanceof TransportError)) throw e;
    connection = null;
    warnOnce(e.message);
    return undefined;
  }
}

function absolute(path) {
  if (typeof path !== 'string' || path === '') throw new TypeError('path must be a non-empty string');
  return require('node:path').resolve(path);
}

function isTracked(options) {
  return !(options && options.tracked === false);
}

function decode(base64) {
  return Buffer.from(base64, 'base64').toString('utf8');
}

/**
 * Reads under `path` (a file or directory; relative paths resolve against `process.cwd()`)
 * do not become cache inputs of this task run. No-op outside Baton.
 * @param {string} path
 */
function ignoreInput(path) {
  if (inBaton()) request({ op: 'ignoreInput', path: absolute(path) });
}

/**
 * Writes under `path` do not become cache outputs of this task run. No-op outside Baton.
 * @param {string} path
 */
function ignoreOutput(path) {
  if (inBaton()) request({ op: 'ignoreOutput', path: absolute(path) });
}

/**
 * This task run is not cached; `reason` is shown to the user. No-op outside Baton.
 * @param {string} [reason]
 */
function disableCache(reason) {
  if (!inBaton()) return;
  request(typeof reason === 'string' ? { op: 'disableCache', reason } : { op: 'disableCache' });
}

/**
 * The value of env variable `name` in the runner's environment (which may hold variables the
 * task was not given), or `undefined` when unset. With `tracked` (the default) the value
 * becomes part of this run's cache key, unless the task config lists the name as untracked.
 * Values are decoded as UTF-8. Outside Baton: `process.env[name]`.
 * @param {string} name
 * @param {{ tracked?: boolean }} [options]
 * @returns {string | undefined}
 */
function getEnv(name, options) {
  if (inBaton()) {
    const result = request({ op: 'getEnv', name: String(name), tracked: isTracked(options) });
    if (result !== undefined) return result.value === null ? undefined : decode(result.value);
  }
  return process.env[name];
}

/**
 * The variables whose names match a glob (`'VITE_*'`) or start with a prefix
 * (`{ prefix: 'VITE_' }`), as an object name → value. With `tracked` (the default) the whole
 * matching set becomes part of the cache key: adding, removing or changing a match is a miss.
 * Outside Baton: matched against `process.env` (`*`, `?` and `[...]` globs).
 * @param {string | { prefix: string }} query
 * @param {{ tracked?: boolean }} [options]
 * @returns {Record<string, string>}
 */
function getEnvs(query, options) {
  const byPrefix = query !== null && typeof query === 'object';
  if (!byPrefix && typeof query !== 'string') throw new TypeError('query must be a glob string or { prefix }');
  if (inBaton()) {
    const req = byPrefix
      ? { op: 'getEnvs', prefix: String(query.prefix), tracked: isTracked(options) }
      : { op: 'getEnvs', glob: query, tracked: isTracked(options) };
    const result = request(req);
    if (result !== undefined) {
      const out = {};
      for (const [n, v] of Object.entries(result.vars)) out[n] = decode(v);
      return out;
    }
  }
  const test = byPrefix ? (n) => n.startsWith(String(query.prefix)) : globTest(query);
  const out = {};
  for (const n of Object.keys(process.env).sort()) if (test(n)) out[n] = process.env[n];
  return out;
}

function globTest(glob) {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const end = glob.indexOf(']', i + 2);
      if (end < 0) re += '\\[';
      else {
        let body = glob.slice(i + 1, end).replace(/\\/g, '\\\\');
        if (body[0] === '!') body = `^${body.slice(1)}`;
        re += `[${body}]`;
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\\]]/g, '\\$&');
  }
  const regex = new RegExp(`^${re}$`, 's');
  return (n) => regex.test(n);
}

const methods = Object.freeze({ ignoreInput, ignoreOutput, disableCache, getEnv, getEnvs });

/**
 * The `@voidzero-dev/vite-task-client` runtime contract: that package calls
 * `require(process.env.VP_RUN_NODE_CLIENT_PATH).load()` and uses the returned object's
 * `ignoreInput`, `ignoreOutput`, `disableCache`, `getEnv` and `getEnvs`.
 * @param {{ version?: number }} [_options] reserved by the contract, ignored
 */
function load(_options) {
  return methods;
}

module.exports = { ignoreInput, ignoreOutput, disableCache, getEnv, getEnvs, inBaton, load };
