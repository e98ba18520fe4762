// What add.js, sum.js and smoke.js share: settings from the environment, the
// ramp, the Add call with idempotent retries, and the exact-total check.
//
// The exact check: every acknowledged Add adds a + b to the counter
// tally_sum_gap; teardown waits until the pipeline is quiet and subtracts how
// far GET /sum rose since setup. The threshold `tally_sum_gap: count==0` then
// fails the run unless the total rose by exactly the acknowledged sums. Nothing
// else may add to the total during the run. When Adds ran out of attempts
// (tally_unresolved_sum > 0), some of them may have been recorded after all:
// a gap between -tally_unresolved_sum and 0 is then explained by them, a
// positive gap never is (an acknowledged Add was lost).

import http from 'k6/http';
import grpc from 'k6/net/grpc';
import { check, sleep } from 'k6';
import { Counter, Gauge, Rate } from 'k6/metrics';

function intFrom(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const value = parseInt(raw, 10);
  if (Number.isNaN(value)) throw new Error(`${name}=${raw} is not an integer`);
  return value;
}

function floatFrom(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const value = parseFloat(raw);
  if (Number.isNaN(value)) throw new Error(`${name}=${raw} is not a number`);
  return value;
}

function hostOf(addr) {
  const colon = addr.lastIndexOf(':');
  return colon < 0 ? addr : addr.slice(0, colon);
}

const adderAddr = __ENV.ADDER_ADDR || '127.0.0.1:50051';

// Every setting, with its default. docs/operating/load-tests.md documents them.
export const config = {
  adderAddr,
  adderHttpUrl: (__ENV.ADDER_HTTP_URL || `http://${hostOf(adderAddr)}:8081`).replace(/\/$/, ''),
  totalerUrl: (__ENV.TOTALER_URL || 'http://127.0.0.1:8080').replace(/\/$/, ''),
  protoDir: __ENV.PROTO_DIR || '../proto',
  peakVus: intFrom('PEAK_VUS', 15000),
  ramp: __ENV.RAMP || '1m',
  thinkSeconds: floatFrom('THINK', 1),
  p95Ms: intFrom('P95_MS', 500),
  maxFailRate: floatFrom('MAX_FAIL_RATE', 0.01),
  attempts: intFrom('ADD_ATTEMPTS', 5),
  requestTimeout: __ENV.REQUEST_TIMEOUT || '10s',
  settleSeconds: intFrom('SETTLE_SECONDS', 5),
  drainTimeoutSeconds: intFrom('DRAIN_TIMEOUT_SECONDS', 300),
};

// Custom metrics (k6 wants them created in the init context).
export const addFailed = new Rate('tally_add_failed');
export const addRetries = new Counter('tally_add_retries');
export const connectErrors = new Counter('tally_connect_errors');
export const ackedSum = new Counter('tally_acked_sum');
export const sumGap = new Counter('tally_sum_gap');
export const totalDelta = new Gauge('tally_total_delta');
// a + b of Adds still unanswered after every attempt: each may or may not have
// been recorded, so the total may exceed the acknowledged sum by up to this.
export const unresolvedSum = new Counter('tally_unresolved_sum');

// Up to PEAK_VUS over RAMP, hold for RAMP, back to zero over RAMP.
export function rampScenario(exec) {
  return {
    executor: 'ramping-vus',
    exec,
    startVUs: 0,
    stages: [
      { duration: config.ramp, target: config.peakVus },
      { duration: config.ramp, target: config.peakVus },
      { duration: config.ramp, target: 0 },
    ],
    // Long enough for an Add's last retry, so no acknowledged-or-not question
    // is left open when a VU stops.
    gracefulRampDown: '90s',
    gracefulStop: '90s',
  };
}

// Thresholds for any script that Adds: failures, latency, and the exact total.
export function addThresholds() {
  return {
    tally_add_failed: [`rate<${config.maxFailRate}`],
    grpc_req_duration: [`p(95)<${config.p95Ms}`],
    tally_sum_gap: ['count==0'],
    checks: ['rate>0.99'],
  };
}

// ---------------------------------------------------------------------------
// gRPC Add

const client = new grpc.Client();
client.load([config.protoDir], 'tally/v1/tally.proto');

let connected = false;

// Codes after which the same request_id may be sent again: the first attempt
// either did nothing or was recorded, and the adder replays it exactly once.
// (k6 hands statuses over as Go values: compare them as numbers.)
const RETRYABLE = new Set(
  [
    grpc.StatusUnavailable,
    grpc.StatusDeadlineExceeded,
    grpc.StatusResourceExhausted,
    grpc.StatusAborted,
    grpc.StatusCanceled,
    grpc.StatusUnknown,
    grpc.StatusInternal,
  ].map(Number),
);

export function isOk(res) {
  return res !== null && Number(res.status) === Number(grpc.StatusOK);
}

function ensureConnected() {
  if (connected) return true;
  try {
    client.connect(config.adderAddr, { plaintext: true, timeout: config.requestTimeout });
    connected = true;
  } catch (e) {
    connectErrors.add(1);
  }
  return connected;
}

function invokeAdd(a, b, requestId) {
  try {
    return client.invoke(
      'tally.v1.Adder/Add',
      { a, b, request_id: requestId },
      { timeout: config.requestTimeout },
    );
  } catch (e) {
    return null;
  }
}

// Adds a + b under requestId, retrying retryable failures with the same id.
// Returns the AddResponse message once acknowledged, or null. An acknowledged
// Add is counted in tally_acked_sum and tally_sum_gap exactly once; one that
// ran out of attempts (its fate unknown) in tally_unresolved_sum.
export function add(a, b, requestId) {
  let refused = false;
  for (let attempt = 1; attempt <= config.attempts; attempt++) {
    if (attempt > 1) {
      addRetries.add(1);
      sleep(Math.min(0.25 * 2 ** (attempt - 2), 4));
    }
    if (!ensureConnected()) continue;
    const res = invokeAdd(a, b, requestId);
    if (res === null) continue;
    if (isOk(res)) {
      check(res, { 'Add answers a + b': (r) => Number(r.message.sum) === a + b });
      ackedSum.add(a + b);
      sumGap.add(a + b);
      addFailed.add(false);
      return res.message;
    }
    if (!RETRYABLE.has(Number(res.status))) {
      console.warn(`Add ${requestId} refused: ${JSON.stringify(res.error)}`);
      refused = true;
      break;
    }
  }
  addFailed.add(true);
  if (!refused) unresolvedSum.add(a + b);
  return null;
}

// Sends requestId again with the same numbers: the adder must replay it.
export function replay(a, b, requestId) {
  if (!ensureConnected()) return null;
  return invokeAdd(a, b, requestId);
}

export function randomTerm() {
  return 1 + Math.floor(Math.random() * 1000);
}

export function think() {
  if (config.thinkSeconds > 0) sleep(config.thinkSeconds);
}

// ---------------------------------------------------------------------------
// GET /sum and the exact-total check

// Reads the current total; throws when the totaler does not answer.
export function readTotal() {
  const res = http.get(`${config.totalerUrl}/sum`, { tags: { name: 'GET /sum' } });
  if (res.status !== 200) {
    throw new Error(`GET ${config.totalerUrl}/sum answered ${res.status}: ${res.body}`);
  }
  const sum = res.json('sum');
  if (!Number.isInteger(sum)) throw new Error(`GET /sum returned no integer sum: ${res.body}`);
  return sum;
}

function outboxPending() {
  const res = http.get(`${config.adderHttpUrl}/metrics`, { tags: { name: 'adder /metrics' } });
  if (res.status !== 200) return null;
  const match = /^adder_outbox_pending(?:\{[^}]*\})?\s+(\S+)$/m.exec(res.body);
  return match ? Number(match[1]) : null;
}

// A run's identity, so its request ids never collide with another run's.
export function newRunId() {
  return `k6-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e9).toString(36)}`;
}

// Setup for scripts that Add: the run id and the total before the run.
export function setupAdds() {
  const baseline = readTotal();
  console.log(`total before the run: ${baseline}`);
  return { runId: newRunId(), baseline };
}

// Waits until the adder's outbox is empty (when its metrics are reachable)
// and GET /sum has not moved for SETTLE_SECONDS; returns that total.
export function waitForQuietTotal() {
  const deadline = Date.now() + config.drainTimeoutSeconds * 1000;
  let last = readTotal();
  let stableSince = Date.now();
  while (Date.now() < deadline) {
    sleep(1);
    const now = readTotal();
    if (now !== last) {
      last = now;
      stableSince = Date.now();
      continue;
    }
    const pending = outboxPending();
    const quietFor = (Date.now() - stableSince) / 1000;
    if ((pending === null || pending === 0) && quietFor >= config.settleSeconds) return last;
  }
  console.error(`the total was still moving after DRAIN_TIMEOUT_SECONDS=${config.drainTimeoutSeconds}`);
  return last;
}

// Teardown for scripts that Add: closes the books on the exact-total check.
export function checkExactTotal(data) {
  const after = waitForQuietTotal();
  const rose = after - data.baseline;
  totalDelta.add(rose);
  sumGap.add(-rose);
  console.log(
    `total after the run: ${after}; it rose by ${rose}. ` +
      'tally_acked_sum is what was acknowledged; tally_sum_gap must be 0.',
  );
}

// teardownTimeout for scripts that Add: the drain wait plus some slack.
export function teardownTimeout() {
  return `${config.drainTimeoutSeconds + 60}s`;
}
