'use strict';
// Calls every RPC of a live proca-stats through the Node.js example client and
// prints what came back as one JSON object; tests/test_node.py checks it.
//
//   node tests/node/exercise.js HOST:PORT CAMPAIGN_ID

const { createClient, status } = require('../../examples/node/stats-client');

const WATCH_DEADLINE_MS = 15000;

function nextMessage(watch) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error('no WatchStats message in time')),
      WATCH_DEADLINE_MS,
    );
    watch.once('data', ({ stats }) => {
      clearTimeout(timer);
      resolve(stats);
    });
  });
}

function failure(promise) {
  return promise.then(
    () => null,
    (error) => ({ code: error.code, details: error.details }),
  );
}

function refusal(watch) {
  return new Promise((resolve) => {
    watch.on('data', () => {
      watch.cancel();
      resolve({ unexpected: 'a message' });
    });
    watch.on('error', (error) => resolve({ code: error.code, details: error.details }));
  });
}

async function main() {
  const [target, campaign] = process.argv.slice(2);
  const stats = createClient(target);
  const out = {};
  try {
    const watch = stats.watchStats(campaign, { minIntervalMs: 100 });
    const watchErrors = [];
    watch.on('error', (error) => watchErrors.push(error.code));
    out.watchFirst = await nextMessage(watch);

    const action = {
      campaign_id: campaign,
      org_id: '7',
      action_type: 'signature',
      area: 'DE',
      new_supporter: true,
      action_id: '71',
    };
    out.counted = [await stats.increment(action), await stats.increment(action)];
    out.watchAfterIncrement = await nextMessage(watch);
    out.getStats = await stats.getStats(campaign);
    out.batchGetStats = await stats.batchGetStats([campaign, '404', campaign]);
    out.badIncrement = await failure(
      stats.increment({ campaign_id: campaign, org_id: 0, action_type: 'x' }),
    );
    out.badBatch = await failure(stats.batchGetStats([campaign, '-1']));
    out.badWatch = await refusal(stats.watchStats(campaign, { minIntervalMs: 5 }));

    const closed = new Promise((resolve) => watch.on('close', resolve));
    watch.cancel();
    await closed;
    out.watchCancelledWith = watchErrors;
    out.cancelledCode = status.CANCELLED;
  } finally {
    stats.close();
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((error) => {
  console.error(error.stack || String(error));
  process.exit(1);
});
