// A live counter of a campaign's supporters, for a page that knows its action page id.
//
// It asks proca-stats' HTTP port (serve --http-listen, with this page's origin in
// --cors-origin) for the page's campaign with a cacheable Connect GET, then keeps the
// figure live with WatchStats, reconnecting after a pause whenever the stream ends
// (it ends when the server restarts).
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { StatsService } from "./gen/proca/stats/v1/stats_pb.js";

const RECONNECT_MS = 2000;
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function showSupporters(element, { server, actionPageId, locale }) {
  const transport = createConnectTransport({ baseUrl: server, useHttpGet: true });
  const stats = createClient(StatsService, transport);
  const format = new Intl.NumberFormat(locale);
  const show = (figures) => {
    element.textContent = format.format(figures.supporters);
    element.dataset.state = "live";
  };
  let campaignId;
  for (;;) {
    try {
      if (campaignId === undefined) {
        const { stats: figures } = await stats.getStats({ actionPageId: BigInt(actionPageId) });
        campaignId = figures.campaignId;
        show(figures);
      }
      for await (const { stats: figures } of stats.watchStats({ campaignId })) {
        show(figures);
      }
    } catch (error) {
      element.dataset.state = "error";
      element.title = String(error.message ?? error);
    }
    await pause(RECONNECT_MS);
  }
}
