'use strict';
// Count an action, read it back three ways, and watch the counter for a while:
//
//   node example.js [HOST:PORT] [CAMPAIGN_ID]

const { createClient, status } = require('./stats-client');

async function main() {
  const [target = '127.0.0.1:50051', campaign = '1'] = process.argv.slice(2);
  const stats = createClient(target);
  try {
    const action = {
      campaign_id: campaign,
      org_id: 1,
      action_type: 'signature',
      area: 'DE',
      new_supporter: true,
      action_id: `${Date.now()}`, // the stored action's id (actions.id): a repeat counts once
    };
    console.log('Increment counted:', await stats.increment(action));
    console.log('Increment again counted:', await stats.increment(action));
    console.log('GetStats:', await stats.getStats(campaign));
    const [one, again] = await stats.batchGetStats([campaign, campaign]);
    console.log('BatchGetStats:', one.supporters, again.supporters);

    const watch = stats.watchStats(campaign, { minIntervalMs: 500 });
    watch.on('data', ({ stats: figures }) => console.log('WatchStats:', figures.supporters));
    watch.on('error', (error) => {
      if (error.code !== status.CANCELLED) console.error(error.message); // CANCELLED: we stopped it
    });
    await stats.increment({ campaign_id: campaign, org_id: 1, action_type: 'share' });
    setTimeout(() => watch.cancel(), 3000);
    await new Promise((resolve) => watch.on('close', resolve));
  } finally {
    stats.close();
  }
}

main().catch((error) => {
  console.error(`error: ${error.message}`);
  process.exit(1);
});
