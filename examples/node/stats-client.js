'use strict';
// A small client of proca-stats for Node.js, on @grpc/grpc-js and @grpc/proto-loader.
//
// It loads the contract from the proto files at run time, so there is no
// generated code to keep in step: copy this file, point PROTO_ROOT at a copy of
// proca-stats' protos/ directory, and call the promise-returning methods.
//
//   const { createClient } = require('./stats-client');
//   const stats = createClient('127.0.0.1:50051');
//   const counted = await stats.increment({ campaign_id: 1, org_id: 2, action_type: 'signature', new_supporter: true });
//   const figures = await stats.getStats(1);
//   const watch = stats.watchStats(1, { minIntervalMs: 1000 });
//   watch.on('data', ({ stats }) => console.log(stats.supporters));
//   watch.cancel(); // when the page goes away
//   stats.close();
//
// int64 values (ids and counts) are strings, as in proto3 JSON, so that no
// count above 2^53 is ever rounded. package.json pins protobufjs 8 through
// "overrides": the 7.x that @grpc/proto-loader 0.8 asks for decodes int64 map
// keys (supporters_by_org) as 8-byte binary strings (protobufjs issue #1203).

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = process.env.PROCA_STATS_PROTOS || path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILE = 'proca/stats/v1/stats.proto';

const definition = protoLoader.loadSync(PROTO_FILE, {
  includeDirs: [PROTO_ROOT],
  keepCase: true, // field names as in the proto: campaign_id, supporters_by_org, ...
  longs: String,
  defaults: true, // zeros and empty maps are present, not missing
});
const { StatsService } = grpc.loadPackageDefinition(definition).proca.stats.v1;

/**
 * A client of one proca-stats server. Every unary call has a deadline of
 * `deadlineMs`; a failure rejects with grpc-js' error, whose `code` is a
 * `grpc.status` value (INVALID_ARGUMENT, UNAVAILABLE, ...) and whose `details`
 * names the field and the rule.
 */
function createClient(target = '127.0.0.1:50051', { deadlineMs = 5000, credentials } = {}) {
  const client = new StatsService(target, credentials || grpc.credentials.createInsecure());

  const call = (method, request) =>
    new Promise((resolve, reject) => {
      client[method](request, { deadline: Date.now() + deadlineMs }, (error, response) =>
        error ? reject(error) : resolve(response),
      );
    });

  return {
    /**
     * Count one accepted action: { campaign_id, org_id, action_type, area?, new_supporter,
     * action_id? }. Resolves to true when it counted, false when its action_id had been
     * counted already.
     */
    increment: async (action) => (await call('Increment', action)).counted,
    /** A campaign's figures; an unknown campaign has zeros. */
    getStats: async (campaignId) => (await call('GetStats', { campaign_id: campaignId })).stats,
    /** The figures of 1..1000 campaigns, one entry per id in the order given. */
    batchGetStats: async (campaignIds) =>
      (await call('BatchGetStats', { campaign_ids: campaignIds })).stats,
    /**
     * A stream of { stats } messages: the figures at once, then after each change,
     * at most once per `minIntervalMs` (0: the server's default of 1000; else >= 100).
     * Listen to 'data', 'error' and 'end'; call `.cancel()` to stop (its 'error'
     * then has code grpc.status.CANCELLED). 'end' means the server shut down:
     * reconnect after a pause.
     */
    watchStats: (campaignId, { minIntervalMs = 0 } = {}) =>
      client.WatchStats({ campaign_id: campaignId, min_interval_ms: minIntervalMs }),
    close: () => client.close(),
  };
}

module.exports = { createClient, status: grpc.status };
