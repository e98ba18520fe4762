// GET /sum ramp: up to PEAK_VUS (default 15000) virtual users, each reading
// TOTALER_URL/sum (default http://127.0.0.1:8080) then pausing THINK seconds
// (default 1), in three stages of RAMP each (up, hold, down).
//
//   k6 run k6/sum.js
//   docker compose --profile load run --rm k6 run /k6/sum.js

import http from 'k6/http';
import { check } from 'k6';

import { config, rampScenario, think } from './lib/tally.js';

export const options = {
  scenarios: { sum: rampScenario('readSum') },
  thresholds: {
    http_req_failed: [`rate<${config.maxFailRate}`],
    http_req_duration: [`p(95)<${config.p95Ms}`],
    checks: ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  console.log(`GET /sum ramp to ${config.peakVus} VUs on ${config.totalerUrl}, stages of ${config.ramp}`);
}

export function readSum() {
  const res = http.get(`${config.totalerUrl}/sum`, { tags: { name: 'GET /sum' } });
  check(res, {
    'GET /sum is 200': (r) => r.status === 200,
    'GET /sum is an integer': (r) => r.status === 200 && Number.isInteger(r.json('sum')),
  });
  think();
}
