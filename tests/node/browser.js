// Drives a real headless Chromium (playwright-core, the system's Chromium) through the
// counter widget, and prints what it saw as one JSON object.
//
//   node browser.js CONFIG_JSON
// CONFIG_JSON: {chromium, allowed, refused, server, page, increment, screenshot}
// `allowed` and `refused` are the widget's URL on a listed and on an unlisted origin.
const { chromium } = require('playwright-core');

const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

async function main() {
  const config = JSON.parse(process.argv[2]);
  const browser = await chromium.launch({ executablePath: config.chromium, args: FLAGS });
  const seen = {};
  try {
    const page = await browser.newPage({ viewport: { width: 360, height: 170 } });
    await page.goto(config.allowed);
    const figure = page.locator('#supporters[data-state="live"]');
    await figure.waitFor({ timeout: 15000 });
    seen.shown = await figure.textContent();

    // An Increment sent meanwhile, from a server (Node), as Proca sends them.
    const sent = Date.now();
    const answer = await fetch(`${config.server}/proca.stats.v1.StatsService/Increment`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(config.increment),
    });
    seen.incrementStatus = answer.status;
    await page.waitForFunction((before) => {
      const element = document.getElementById('supporters');
      return element.dataset.state === 'live' && element.textContent !== before;
    }, seen.shown, { timeout: 10000 });
    seen.updateMs = Date.now() - sent;
    seen.updated = await page.locator('#supporters').textContent();
    await page.screenshot({ path: config.screenshot });

    // The same Increment from the page itself: its preflight is refused.
    seen.pageIncrement = await page.evaluate(async ({ server, increment }) => {
      try {
        const reply = await fetch(`${server}/proca.stats.v1.StatsService/Increment`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(increment),
        });
        return `answered ${reply.status}`;
      } catch (error) {
        return `refused: ${error.name}`;
      }
    }, { server: config.server, increment: config.increment });

    const stranger = await browser.newPage();
    await stranger.goto(config.refused);
    await stranger.locator('#supporters[data-state="error"]').waitFor({ timeout: 15000 });
    seen.strangerText = await stranger.locator('#supporters').textContent();
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(seen));
}

main().catch((error) => {
  process.stderr.write(`${error.stack}\n`);
  process.exit(1);
});
