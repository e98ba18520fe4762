// Smoke test: 2 virtual users, 10 Adds each over gRPC on ADDER_ADDR, one
// replay of each Add (same request_id: must come back replayed, counted once),
// a GET /sum on TOTALER_URL after each, and the exact-total check at the end.
//
//   k6 run k6/smoke.js
//   docker compose --profile load run --rm k6        (runs this by default)

import http from 'k6/http';
import { check } from 'k6';

import { add, checkExactTotal, config, isOk, randomTerm, replay, setupAdds } from './lib/tally.js';

export const options = {
  scenarios: {
    smoke: { executor: 'per-vu-iterations', vus: 2, iterations: 10, maxDuration: '2m' },
  },
  thresholds: {
    tally_add_failed: ['rate==0'],
    grpc_req_duration: [`p(95)<${config.p95Ms}`],
    http_req_failed: ['rate==0'],
    tally_sum_gap: ['count==0'],
    checks: ['rate==1'],
  },
  teardownTimeout: '2m',
};

export function setup() {
  return setupAdds();
}

export default function (data) {
  const a = randomTerm();
  const b = randomTerm();
  const requestId = `${data.runId}-${__VU}-${__ITER}`;
  const first = add(a, b, requestId);
  if (first !== null) {
    const again = replay(a, b, requestId);
    check(again, {
      'replay is acknowledged': (r) => isOk(r),
      'replay says replayed': (r) => isOk(r) && r.message.replayed === true,
      'replay has the same sum': (r) => isOk(r) && Number(r.message.sum) === a + b,
    });
  }
  const res = http.get(`${config.totalerUrl}/sum`, { tags: { name: 'GET /sum' } });
  check(res, { 'GET /sum is an integer': (r) => r.status === 200 && Number.isInteger(r.json('sum')) });
}

export function teardown(data) {
  checkExactTotal(data);
}
