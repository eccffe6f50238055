import { describe, expect, it } from 'vitest';
import { Api, cliOk } from '../helpers/cli.js';
import { startCluster } from '../helpers/cluster.js';
import { redisUnavailableReason } from '../helpers/redis.js';

const why = redisUnavailableReason();
if (why) console.log(`skipping the console cluster test: ${why}`);

/** The console's form token on a page (the hidden `csrf` field). */
const csrfOf = (html: string) => /name="csrf" value="([^"]+)"/.exec(html)?.[1];

describe.skipIf(why !== undefined)('the console on a cluster', () => {
  it('a sign-in on one node is good on another; lists, cancels and serves metrics from the shared store', { timeout: 120_000 }, async () => {
    const c = await startCluster({ nodes: 2 });
    const [n1, n2] = c.nodes as [(typeof c.nodes)[0], (typeof c.nodes)[0]];
    const admin = await cliOk(['relay', 'token', 'add', 'ops', '--admin', '--store', c.url]);
    const sender = await cliOk(['relay', 'token', 'add', 'web', '--store', c.url]);
    await cliOk(['relay', 'device', 'add', 'till', '--store', c.url]);

    // Sign in on node 1 (a form POST, as the browser sends it).
    const base1 = `http://${n1.http}`;
    const base2 = `http://${n2.http}`;
    const signIn = await fetch(`${base1}/console/sign-in`, {
      method: 'POST',
      redirect: 'manual',
      headers: { 'content-type': 'application/x-www-form-urlencoded', origin: base1, 'sec-fetch-site': 'same-origin' },
      body: new URLSearchParams({ token: admin }).toString(),
    });
    expect(signIn.status).toBe(303);
    const cookie = /^(dw_console=[^;]+)/.exec(signIn.headers.get('set-cookie') ?? '')?.[1];
    expect(cookie).toBeDefined();

    // The same cookie on node 2.
    const queued = (await new Api(n1.http, sender).send('till', 'receipt-9.txt', 'x')).json.id as string;
    const page = await fetch(`${base2}/console/messages?q=receipt-9`, { headers: { cookie: cookie!, accept: 'text/html' }, redirect: 'manual' });
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain('receipt-9.txt');
    expect(html).toContain(`/console/messages/${queued}`);
    const devices = await (await fetch(`${base2}/`, { headers: { cookie: cookie!, accept: 'text/html' } })).text();
    expect(devices).toContain('data-device="till"');
    expect(devices).toContain('not enrolled');

    // Cancel through node 2 with node 2's page's form token.
    const cancel = await fetch(`${base2}/console/messages/${queued}/cancel`, {
      method: 'POST',
      redirect: 'manual',
      headers: { cookie: cookie!, 'content-type': 'application/x-www-form-urlencoded', origin: base2, 'sec-fetch-site': 'same-origin' },
      body: new URLSearchParams({ csrf: csrfOf(html)! }).toString(),
    });
    expect(cancel.status).toBe(303);
    expect((await new Api(n1.http, sender).message(queued)).status).toBe('cancelled');

    // Metrics from each node, labelled with the node; the node that applied a status counts it, once.
    const metrics = async (base: string) => (await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${admin}` } })).text();
    expect(await metrics(base2)).toMatch(/^dropwire_messages_total\{status="cancelled",node="node2"\} 1$/m);
    expect(await metrics(base1)).toMatch(/^dropwire_messages_total\{status="cancelled",node="node1"\} 0$/m);
  });
});
