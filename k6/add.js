// gRPC Add ramp: up to PEAK_VUS (default 15000) virtual users, each calling
// tally.v1.Adder/Add on ADDER_ADDR (default 127.0.0.1:50051) then pausing THINK
// seconds (default 1), in three stages of RAMP each (up, hold, down). At the
// end it waits for the pipeline to drain and fails the run unless GET /sum on
// TOTALER_URL rose by exactly the sum of the Adds that were acknowledged.
//
//   k6 run k6/add.js                                   (local k6, published ports)
//   docker compose --profile load run --rm k6 run /k6/add.js
//   PEAK_VUS=500 RAMP=20s k6 run k6/add.js

import {
  add,
  addThresholds,
  checkExactTotal,
  config,
  rampScenario,
  randomTerm,
  setupAdds,
  teardownTimeout,
  think,
} from './lib/tally.js';

export const options = {
  scenarios: { add: rampScenario('addOnce') },
  thresholds: addThresholds(),
  setupTimeout: '60s',
  teardownTimeout: teardownTimeout(),
  summaryTrendStats: ['avg', 'min', 'med', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  console.log(`Add ramp to ${config.peakVus} VUs on ${config.adderAddr}, stages of ${config.ramp}`);
  return setupAdds();
}

export function addOnce(data) {
  const a = randomTerm();
  const b = randomTerm();
  add(a, b, `${data.runId}-${__VU}-${__ITER}`);
  think();
}

export function teardown(data) {
  checkExactTotal(data);
}
