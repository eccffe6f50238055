/**
 * The one contract every relay `Store` backend passes (SQLite now, Redis later): call
 * `storeContract(name, makeStore)` from a backend's test file. `makeStore(dir)` opens the backend's
 * store rooted at `dir`; calling it again with the same `dir` after `close()` must reopen the same data.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it, onTestFinished } from 'vitest';
import {
  canTransition,
  MessageStatus,
  type MessageQuery,
  type MessageRecord,
  type NewMessage,
  type Store,
  type StatusChange,
} from '../../src/relay/store/types.js';

export interface StoreContractOptions {
  /** False for a backend whose data does not outlive `close()` (an in-memory store). Default true. */
  persistent?: boolean;
}

const enc = new TextEncoder();
const SHA = 'ab'.repeat(32);
const KEY_A = '11'.repeat(32);
const KEY_B = '22'.repeat(32);

let counter = 0;

/** A new inline message to `shop1` from `web`; `over` replaces any field. */
export function newMessage(over: Partial<NewMessage> = {}): NewMessage {
  const id = over.id ?? `m-${++counter}`;
  const base: NewMessage =
    over.bodyPath !== undefined
      ? { id, to: 'shop1', from: 'web', filename: `${id}.pdf`, size: 4096, sha256: SHA, createdAt: 1_000 }
      : (() => {
          const body = over.body ?? enc.encode(`<order id="${id}"/>`);
          return { id, to: 'shop1', from: 'web', filename: `${id}.xml`, size: body.byteLength, sha256: SHA, body, createdAt: 1_000 };
        })();
  return { ...base, ...over };
}

export function storeContract(
  name: string,
  makeStore: (dir: string) => Promise<Store>,
  options: StoreContractOptions = {},
): void {
  const persistent = options.persistent ?? true;

  /** A fresh store in a fresh temp dir, closed and removed when the test ends. */
  async function fresh(): Promise<{ store: Store; reopen(): Promise<Store> }> {
    const dir = mkdtempSync(join(tmpdir(), 'dropwire-store-'));
    const opened: Store[] = [];
    onTestFinished(async () => {
      for (const s of opened) await s.close();
      rmSync(dir, { recursive: true, force: true });
    });
    const open = async (): Promise<Store> => {
      const s = await makeStore(dir);
      opened.push(s);
      return s;
    };
    const store = await open();
    return {
      store,
      reopen: async () => {
        await store.close();
        return open();
      },
    };
  }

  async function enqueueMany(store: Store, messages: NewMessage[]): Promise<MessageRecord[]> {
    const out = await Promise.all(messages.map((m) => store.enqueue(m)));
    return out.map((r) => r.message);
  }

  describe(`Store contract: ${name}`, () => {
    describe('devices', () => {
      it('creates, gets, lists and refuses a duplicate name', async () => {
        const { store } = await fresh();
        await store.createDevice({ name: 'shop2', createdAt: 5, enrollSecretHash: 'h2', enrollExpiresAt: 99 });
        await store.createDevice({ name: 'shop1', createdAt: 4 });
        expect(await store.getDevice('shop2')).toEqual({
          name: 'shop2',
          createdAt: 5,
          enrollSecretHash: 'h2',
          enrollExpiresAt: 99,
        });
        expect(await store.getDevice('nope')).toBeUndefined();
        expect((await store.listDevices()).map((d) => d.name)).toEqual(['shop1', 'shop2']);
        await expect(store.createDevice({ name: 'shop1', createdAt: 6 })).rejects.toMatchObject({
          code: 'DW_DEVICE_EXISTS',
        });
        expect(await store.getDevice('shop1')).toMatchObject({ createdAt: 4 });
      });

      it('enrolls once: binds the key, clears the secret, then refuses', async () => {
        const { store } = await fresh();
        await store.createDevice({ name: 'shop1', createdAt: 1, enrollSecretHash: 'h', enrollExpiresAt: 100 });
        await store.enrollDevice('shop1', KEY_A, 50);
        const d = await store.getDevice('shop1');
        expect(d).toMatchObject({ name: 'shop1', publicKey: KEY_A, enrolledAt: 50 });
        expect(d?.enrollSecretHash).toBeUndefined();
        expect(await store.getDeviceByKey(KEY_A)).toMatchObject({ name: 'shop1' });
        expect(await store.getDeviceByKey(KEY_B)).toBeUndefined();
        await expect(store.enrollDevice('shop1', KEY_B, 60)).rejects.toMatchObject({ code: 'DW_ENROLL_REFUSED' });
        expect((await store.getDevice('shop1'))?.publicKey).toBe(KEY_A);
      });

      it('refuses to enroll an unknown device, an expired secret, or a key bound elsewhere', async () => {
        const { store } = await fresh();
        await expect(store.enrollDevice('ghost', KEY_A, 1)).rejects.toMatchObject({ code: 'DW_DEVICE_NOT_FOUND' });
        await store.createDevice({ name: 'late', createdAt: 1, enrollSecretHash: 'h', enrollExpiresAt: 10 });
        await expect(store.enrollDevice('late', KEY_A, 11)).rejects.toMatchObject({ code: 'DW_ENROLL_REFUSED' });
        await store.createDevice({ name: 'a', createdAt: 1, enrollSecretHash: 'h' });
        await store.createDevice({ name: 'b', createdAt: 1, enrollSecretHash: 'h' });
        await store.enrollDevice('a', KEY_A, 2);
        await expect(store.enrollDevice('b', KEY_A, 3)).rejects.toMatchObject({ code: 'DW_ENROLL_REFUSED' });
        expect((await store.getDevice('b'))?.publicKey).toBeUndefined();
      });

      it('touchDevice raises lastSeen and the handshake guard, never lowers them', async () => {
        const { store } = await fresh();
        await store.createDevice({ name: 'shop1', createdAt: 1 });
        await store.touchDevice('shop1', 100, 90);
        await store.touchDevice('shop1', 80);
        expect(await store.getDevice('shop1')).toMatchObject({ lastSeen: 100, lastHandshakeTs: 90 });
        await store.touchDevice('shop1', 200, 70);
        expect(await store.getDevice('shop1')).toMatchObject({ lastSeen: 200, lastHandshakeTs: 90 });
        await store.touchDevice('shop1', 300, 150);
        expect(await store.getDevice('shop1')).toMatchObject({ lastSeen: 300, lastHandshakeTs: 150 });
        await expect(store.touchDevice('ghost', 1)).resolves.toBeUndefined();
      });

      it('setAgentVersion keeps the last version the agent reported; unknown devices are a no-op', async () => {
        const { store } = await fresh();
        await store.createDevice({ name: 'shop1', createdAt: 1 });
        expect((await store.getDevice('shop1'))?.agentVersion).toBeUndefined();
        await store.setAgentVersion('shop1', 'dropwire/0.1');
        await store.setAgentVersion('shop1', 'dropwire/0.2.0 (0123abcd4567)');
        expect(await store.getDevice('shop1')).toMatchObject({ agentVersion: 'dropwire/0.2.0 (0123abcd4567)' });
        expect((await store.listDevices()).find((d) => d.name === 'shop1')?.agentVersion).toBe('dropwire/0.2.0 (0123abcd4567)');
        await store.touchDevice('shop1', 50, 10);
        expect((await store.getDevice('shop1'))?.agentVersion).toBe('dropwire/0.2.0 (0123abcd4567)');
        await expect(store.setAgentVersion('ghost', 'dropwire/0.1')).resolves.toBeUndefined();
        expect(await store.getDevice('ghost')).toBeUndefined();
      });

      it('a device sends nowhere until allowed: sendTo is kept by createDevice and replaced by setSendTo', async () => {
        const { store } = await fresh();
        await store.createDevice({ name: 'till', createdAt: 1 });
        await store.createDevice({ name: 'kitchen', createdAt: 1, sendTo: 'office-*' });
        expect((await store.getDevice('till'))?.sendTo).toBeUndefined();
        expect((await store.getDevice('kitchen'))?.sendTo).toBe('office-*');
        await expect(store.setSendTo('till', 'office')).resolves.toBe(true);
        await store.enrollDevice('till', KEY_A, 2);
        expect(await store.getDeviceByKey(KEY_A)).toMatchObject({ name: 'till', sendTo: 'office' });
        expect((await store.listDevices()).find((d) => d.name === 'till')?.sendTo).toBe('office');
        await store.touchDevice('till', 5, 5);
        await store.setAgentVersion('till', 'dropwire/0.2.0');
        expect((await store.getDevice('till'))?.sendTo).toBe('office');
        await expect(store.setSendTo('kitchen', undefined)).resolves.toBe(true);
        expect((await store.getDevice('kitchen'))?.sendTo).toBeUndefined();
        await expect(store.setSendTo('ghost', '*')).resolves.toBe(false);
        expect(await store.getDevice('ghost')).toBeUndefined();
      });

      it('keeps a message sealed flag: set at enqueue, read back by getMessage and pending', async () => {
        const { store } = await fresh();
        const [plain] = await enqueueMany(store, [newMessage()]);
        const sealed = newMessage({ sealed: true });
        await store.enqueue(sealed);
        expect((await store.getMessage(plain!.id))?.sealed).toBeUndefined();
        expect((await store.getMessage(sealed.id))?.sealed).toBe(true);
        const pending = await store.pending(sealed.to, 0, 10);
        expect(pending.find((m) => m.id === sealed.id)?.sealed).toBe(true);
        expect(pending.find((m) => m.id === plain!.id)?.sealed).toBeUndefined();
      });

      it('keeps whether a token receives files and where they are pushed', async () => {
        const { store } = await fresh();
        await store.createToken({ name: 'web', hash: 'h-web', to: '*', createdAt: 1 });
        await store.createToken({ name: 'shop', hash: 'h-shop', to: '-', receive: true, deliverUrl: 'http://127.0.0.1:9/in', webhookSecret: 'whsec_x', createdAt: 2 });
        await store.createToken({ name: 'pull', hash: 'h-pull', to: '-', receive: true, createdAt: 3 });
        expect((await store.getTokenByHash('h-web'))?.receive).toBeUndefined();
        expect(await store.getTokenByHash('h-shop')).toMatchObject({ receive: true, deliverUrl: 'http://127.0.0.1:9/in', webhookSecret: 'whsec_x' });
        const pull = (await store.listTokens()).find((t) => t.name === 'pull');
        expect(pull).toMatchObject({ receive: true });
        expect(pull?.deliverUrl).toBeUndefined();
      });

      it('removeDevice deletes it and cancels its undelivered messages only', async () => {
        const { store } = await fresh();
        await store.createDevice({ name: 'shop1', createdAt: 1 });
        const [q, s, h, other] = await enqueueMany(store, [
          newMessage(),
          newMessage(),
          newMessage(),
          newMessage({ to: 'shop2' }),
        ]);
        await store.setStatus([
          { id: s!.id, status: 'sent', at: 2 },
          { id: h!.id, status: 'handled', at: 3 },
        ]);
        expect(await store.removeDevice('shop1', 10)).toBe(true);
        expect(await store.getDevice('shop1')).toBeUndefined();
        expect(await store.removeDevice('shop1', 11)).toBe(false);
        expect((await store.getMessage(q!.id))?.status).toBe('cancelled');
        expect((await store.getMessage(s!.id))?.status).toBe('cancelled');
        expect((await store.getMessage(h!.id))?.status).toBe('handled');
        expect((await store.getMessage(other!.id))?.status).toBe('queued');
        expect(await store.countPending('shop1')).toBe(0);
        expect(await store.pending('shop1', 0, 10)).toEqual([]);
        const hist = await store.getHistory(s!.id);
        expect(hist.map((e) => e.status)).toEqual(['queued', 'sent', 'cancelled']);
        expect(hist[2]).toMatchObject({ status: 'cancelled', at: 10 });
      });
    });

    describe('tokens', () => {
      it('creates, finds by hash, lists, refuses duplicates and removes', async () => {
        const { store } = await fresh();
        await store.createToken({ name: 'shopsite', hash: 'aa', to: 'shop*', webhook: 'https://x/hook', createdAt: 1 });
        await store.createToken({ name: 'booking', hash: 'bb', to: '*', createdAt: 2 });
        expect(await store.getTokenByHash('aa')).toEqual({
          name: 'shopsite',
          hash: 'aa',
          to: 'shop*',
          webhook: 'https://x/hook',
          createdAt: 1,
        });
        expect(await store.getTokenByHash('cc')).toBeUndefined();
        expect((await store.listTokens()).map((t) => t.name)).toEqual(['booking', 'shopsite']);
        await expect(store.createToken({ name: 'booking', hash: 'dd', to: '*', createdAt: 3 })).rejects.toMatchObject({
          code: 'DW_TOKEN_EXISTS',
        });
        expect(await store.removeToken('booking')).toBe(true);
        expect(await store.removeToken('booking')).toBe(false);
        expect(await store.getTokenByHash('bb')).toBeUndefined();
        expect((await store.listTokens()).map((t) => t.name)).toEqual(['shopsite']);
      });

      it('keeps a token\'s role (admin, metrics; none is a sender)', async () => {
        const { store, reopen } = await fresh();
        await store.createToken({ name: 'ops', hash: 'a1', to: '*', role: 'admin', createdAt: 1 });
        await store.createToken({ name: 'prom', hash: 'b1', to: '*', role: 'metrics', createdAt: 2 });
        await store.createToken({ name: 'web', hash: 'c1', to: '*', createdAt: 3 });
        const again = persistent ? await reopen() : store;
        expect(await again.getTokenByHash('a1')).toMatchObject({ name: 'ops', role: 'admin' });
        expect(await again.getTokenByHash('b1')).toMatchObject({ name: 'prom', role: 'metrics' });
        expect((await again.getTokenByHash('c1'))?.role).toBeUndefined();
        expect((await again.listTokens()).map((t) => [t.name, t.role ?? 'send'])).toEqual([['ops', 'admin'], ['prom', 'metrics'], ['web', 'send']]);
      });
    });

    describe('renewEnrollment', () => {
      it('gives an enrolled device a new secret and unbinds its key, so another host can enroll', async () => {
        const { store } = await fresh();
        await store.createDevice({ name: 'shop1', enrollSecretHash: 'old', enrollExpiresAt: 100, createdAt: 1 });
        await store.enrollDevice('shop1', KEY_A, 10);
        expect(await store.renewEnrollment('shop1', 'new', 500)).toBe(true);
        expect(await store.renewEnrollment('nobody', 'x', 500)).toBe(false);
        const d = await store.getDevice('shop1');
        expect(d).toMatchObject({ name: 'shop1', enrollSecretHash: 'new', enrollExpiresAt: 500 });
        expect(d?.publicKey).toBeUndefined();
        expect(await store.getDeviceByKey(KEY_A)).toBeUndefined();
        await store.enrollDevice('shop1', KEY_B, 20);
        expect((await store.getDeviceByKey(KEY_B))?.name).toBe('shop1');
      });
    });

    describe('listMessages', () => {
      it('filters by device, sender, status, attention, time and search, newest first', async () => {
        const { store } = await fresh();
        await enqueueMany(store, [
          newMessage({ id: 'l1', to: 'shop1', from: 'web', filename: 'Invoice-7.pdf', createdAt: 100, deadlineAt: 150 }),
          newMessage({ id: 'l2', to: 'shop2', from: 'web', filename: 'label.zpl', createdAt: 200 }),
          newMessage({ id: 'l3', to: 'shop1', from: 'erp', filename: 'run.sh', createdAt: 300 }),
          newMessage({ id: 'l4', to: 'shop2', from: 'erp', filename: 'invoice-8.pdf', createdAt: 400 }),
          newMessage({ id: 'l5', to: 'shop1', from: 'web', filename: 'done.txt', createdAt: 500 }),
        ]);
        await store.setStatus([
          { id: 'l3', status: 'failed', at: 310, result: { exitCode: 2 } },
          { id: 'l4', status: 'rejected', at: 410 },
          { id: 'l5', status: 'handled', at: 510 },
        ]);
        expect(await store.markOverdue('l1', 160)).toBe(true);
        const ids = async (q: Omit<MessageQuery, 'limit'>) => (await store.listMessages({ limit: 50, ...q })).messages.map((m) => m.id);
        expect(await ids({})).toEqual(['l5', 'l4', 'l3', 'l2', 'l1']);
        expect(await ids({ device: 'shop1' })).toEqual(['l5', 'l3', 'l1']);
        expect(await ids({ sender: 'erp' })).toEqual(['l4', 'l3']);
        expect(await ids({ device: 'shop1', sender: 'web' })).toEqual(['l5', 'l1']);
        expect(await ids({ statuses: ['failed', 'handled'] })).toEqual(['l5', 'l3']);
        expect(await ids({ attention: true })).toEqual(['l4', 'l3', 'l1']);
        expect(await ids({ since: 200, until: 400 })).toEqual(['l3', 'l2']);
        expect(await ids({ search: 'INVOICE' })).toEqual(['l4', 'l1']);
        expect(await ids({ search: 'l2' })).toEqual(['l2']);
        expect(await ids({ device: 'nobody' })).toEqual([]);
        const [failed] = (await store.listMessages({ limit: 1, statuses: ['failed'] })).messages;
        expect(failed).toMatchObject({ id: 'l3', status: 'failed', to: 'shop1', from: 'erp', filename: 'run.sh', result: { exitCode: 2 } });
      });

      it('pages through every match exactly once, and refuses a bad query', async () => {
        const { store } = await fresh();
        const all = await enqueueMany(store, Array.from({ length: 23 }, (_, i) => newMessage({ id: `p${i}`, createdAt: 1_000 + i })));
        const seen: string[] = [];
        let before: number | undefined;
        for (let page = 0; page < 10; page++) {
          const r = await store.listMessages({ limit: 5, ...(before !== undefined ? { beforeSeq: before } : {}) });
          expect(r.messages.length).toBeLessThanOrEqual(5);
          seen.push(...r.messages.map((m) => m.id));
          if (r.next === undefined) break;
          before = r.next;
        }
        expect(seen).toEqual(all.map((m) => m.id).reverse());
        await expect(store.listMessages({ limit: 0 })).rejects.toMatchObject({ code: 'DW_STORE_INVALID' });
        await expect(store.listMessages({ limit: 1_000 })).rejects.toMatchObject({ code: 'DW_STORE_INVALID' });
        await expect(store.listMessages({ limit: 5, statuses: ['lost' as never] })).rejects.toMatchObject({ code: 'DW_STORE_INVALID' });
      });
    });

    describe('messages', () => {
      it('enqueue, getMessage and readInlineBody round-trip', async () => {
        const { store } = await fresh();
        const body = new Uint8Array(1024).map((_, i) => i % 251);
        const m = newMessage({ body, size: body.byteLength, deadlineAt: 5_000, expiresAt: 9_000, idempotencyKey: 'k1' });
        const { message, created } = await store.enqueue(m);
        expect(created).toBe(true);
        expect(message).toMatchObject({
          id: m.id,
          to: 'shop1',
          from: 'web',
          filename: m.filename,
          size: 1024,
          sha256: SHA,
          inline: true,
          status: 'queued',
          idempotencyKey: 'k1',
          createdAt: 1_000,
          updatedAt: 1_000,
          deadlineAt: 5_000,
          expiresAt: 9_000,
          overdue: false,
        });
        expect(message.seq).toBeGreaterThan(0);
        expect(await store.getMessage(m.id)).toEqual(message);
        expect(await store.readInlineBody(m.id)).toEqual(body);
        expect(await store.getMessage('nope')).toBeUndefined();
        expect(await store.readInlineBody('nope')).toBeUndefined();
        expect(await store.getHistory(m.id)).toEqual([{ status: 'queued', at: 1_000 }]);
      });

      it('keeps an empty inline body and a body file path apart', async () => {
        const { store } = await fresh();
        const empty = newMessage({ body: new Uint8Array(0), size: 0 });
        const file = newMessage({ bodyPath: '/var/lib/dropwire/blobs/ab12' });
        await enqueueMany(store, [empty, file]);
        expect(await store.getMessage(empty.id)).toMatchObject({ inline: true, size: 0 });
        expect(await store.readInlineBody(empty.id)).toEqual(new Uint8Array(0));
        expect(await store.getMessage(file.id)).toMatchObject({ inline: false, bodyPath: '/var/lib/dropwire/blobs/ab12' });
        expect(await store.readInlineBody(file.id)).toBeUndefined();
        const pending = await store.pending(empty.to, 0, 10);
        expect(pending.find((m) => m.id === empty.id)?.body).toEqual(new Uint8Array(0));
        expect(pending.find((m) => m.id === file.id)).not.toHaveProperty('body');
      });

      it('refuses a message without exactly one body, or with a wrong size, and a reused id', async () => {
        const { store } = await fresh();
        const none = newMessage();
        delete none.body;
        await expect(store.enqueue(none)).rejects.toMatchObject({ code: 'DW_STORE_INVALID' });
        await expect(store.enqueue(newMessage({ bodyPath: '/b', body: enc.encode('x') }))).rejects.toMatchObject({
          code: 'DW_STORE_INVALID',
        });
        await expect(store.enqueue(newMessage({ body: enc.encode('abc'), size: 4 }))).rejects.toMatchObject({
          code: 'DW_STORE_INVALID',
        });
        const m = newMessage();
        await store.enqueue(m);
        await expect(store.enqueue(newMessage({ id: m.id }))).rejects.toMatchObject({ code: 'DW_MESSAGE_EXISTS' });
        expect(await store.countPending('shop1')).toBe(1);
      });
    });

    describe('idempotency', () => {
      it('same sender and key gives the same message; another sender gets a new one', async () => {
        const { store } = await fresh();
        const first = await store.enqueue(newMessage({ idempotencyKey: 'order-7' }));
        const repeat = newMessage({ idempotencyKey: 'order-7', filename: 'other.xml' });
        const again = await store.enqueue(repeat);
        expect(again.created).toBe(false);
        expect(again.message).toEqual(first.message);
        expect(await store.getMessage(repeat.id)).toBeUndefined();
        const other = await store.enqueue(newMessage({ idempotencyKey: 'order-7', from: 'booking' }));
        expect(other.created).toBe(true);
        expect(other.message.id).not.toBe(first.message.id);
        expect(await store.countPending('shop1')).toBe(2);
      });

      it('a key repeated among concurrent enqueues still stores one message', async () => {
        const { store } = await fresh();
        const results = await Promise.all(
          Array.from({ length: 10 }, () => store.enqueue(newMessage({ idempotencyKey: 'same' }))),
        );
        expect(results.filter((r) => r.created)).toHaveLength(1);
        expect(new Set(results.map((r) => r.message.id)).size).toBe(1);
        expect(await store.countPending('shop1')).toBe(1);
      });

      it('returns the existing message in its current state', async () => {
        const { store } = await fresh();
        const { message } = await store.enqueue(newMessage({ idempotencyKey: 'k' }));
        await store.setStatus([{ id: message.id, status: 'handled', at: 7, result: { exitCode: 0 } }]);
        const again = await store.enqueue(newMessage({ idempotencyKey: 'k' }));
        expect(again).toMatchObject({ created: false, message: { id: message.id, status: 'handled', result: { exitCode: 0 } } });
      });
    });

    describe('retries', () => {
      it('a retry names the old message in its queued entry; the old one gets its retriedAs entry in the same write', async () => {
        const { store } = await fresh();
        const { message: old } = await store.enqueue(newMessage());
        await store.setStatus([{ id: old.id, status: 'failed', at: 2_000, detail: { code: 'DW_EXEC_FAILED' } }]);
        const retry = newMessage({ retryOf: old.id, idempotencyKey: `dropwire:retry:${old.id}`, createdAt: 3_000 });
        const first = await store.enqueue(retry);
        expect(first.created).toBe(true);
        expect(await store.getHistory(retry.id)).toEqual([{ status: 'queued', at: 3_000, detail: { retryOf: old.id } }]);
        const oldHistory = await store.getHistory(old.id);
        expect(oldHistory.at(-1)).toEqual({ status: 'failed', at: 3_000, detail: { retriedAs: retry.id } });
        expect((await store.getMessage(old.id))?.status).toBe('failed');
        // Asked again (same key): the first retry, and no second link on the old message.
        const again = await store.enqueue(newMessage({ retryOf: old.id, idempotencyKey: `dropwire:retry:${old.id}`, createdAt: 4_000 }));
        expect(again).toMatchObject({ created: false, message: { id: retry.id } });
        expect(await store.getHistory(old.id)).toHaveLength(oldHistory.length);
      });
    });

    describe('a failing write in a busy moment', () => {
      it('rejects only itself; the writes around it are stored', async () => {
        const { store } = await fresh();
        await store.createDevice({ name: 'taken', createdAt: 1 });
        const dup = newMessage();
        await store.enqueue(dup);
        const good = Array.from({ length: 20 }, () => newMessage());
        const settled = await Promise.allSettled([
          ...good.slice(0, 10).map((m) => store.enqueue(m)),
          store.enqueue(newMessage({ id: dup.id })),
          store.createDevice({ name: 'taken', createdAt: 2 }),
          store.createDevice({ name: 'fresh', createdAt: 2 }),
          store.createToken({ name: 't', hash: 'h1', to: '*', createdAt: 1 }),
          store.createToken({ name: 't', hash: 'h2', to: '*', createdAt: 1 }),
          ...good.slice(10).map((m) => store.enqueue(m)),
        ]);
        const rejected = settled.flatMap((s, i) => (s.status === 'rejected' ? [[i, (s.reason as { code?: string }).code]] : []));
        expect(rejected).toEqual([
          [10, 'DW_MESSAGE_EXISTS'],
          [11, 'DW_DEVICE_EXISTS'],
          [14, 'DW_TOKEN_EXISTS'],
        ]);
        for (const m of good) expect((await store.getMessage(m.id))?.status).toBe('queued');
        expect(await store.getDevice('fresh')).toBeDefined();
        expect(await store.getTokenByHash('h1')).toMatchObject({ name: 't' });
        expect(await store.getTokenByHash('h2')).toBeUndefined();
        expect(await store.countPending('shop1')).toBe(21);
      });
    });

    describe('pending', () => {
      it('gives each device its messages in enqueue order, paged by seq', async () => {
        const { store } = await fresh();
        const devices = ['shop1', 'shop2', 'kitchen'];
        const sent: Record<string, string[]> = { shop1: [], shop2: [], kitchen: [] };
        // Interleaved, partly concurrent: waves of 7 across the three devices.
        for (let wave = 0; wave < 5; wave++) {
          const batch = Array.from({ length: 7 }, (_, i) => newMessage({ to: devices[(wave + i) % 3]! }));
          for (const m of batch) sent[m.to]!.push(m.id);
          await enqueueMany(store, batch);
        }
        for (const d of devices) {
          const all = await store.pending(d, 0, 1_000);
          expect(all.map((m) => m.id)).toEqual(sent[d]);
          const seqs = all.map((m) => m.seq);
          expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
          expect(new Set(seqs).size).toBe(seqs.length);
          expect(await store.countPending(d)).toBe(sent[d]!.length);
          // Paging: afterSeq is exclusive, limit bounds the page.
          const page1 = await store.pending(d, 0, 4);
          const page2 = await store.pending(d, page1.at(-1)!.seq, 4);
          expect([...page1, ...page2].map((m) => m.id)).toEqual(sent[d]!.slice(0, 8));
          // Inline messages come with their body, the same bytes readInlineBody gives.
          for (const m of page1) expect(m.body).toEqual(await store.readInlineBody(m.id));
        }
        expect(await store.pending('nobody', 0, 10)).toEqual([]);
        expect(await store.countPending('nobody')).toBe(0);
      });

      it('keeps sent messages pending and drops received and final ones', async () => {
        const { store } = await fresh();
        const [a, b, c, d] = await enqueueMany(store, [newMessage(), newMessage(), newMessage(), newMessage()]);
        await store.setStatus([
          { id: a!.id, status: 'sent', at: 2 },
          { id: b!.id, status: 'received', at: 2 },
          { id: c!.id, status: 'expired', at: 2 },
        ]);
        expect((await store.pending('shop1', 0, 10)).map((m) => [m.id, m.status])).toEqual([
          [a!.id, 'sent'],
          [d!.id, 'queued'],
        ]);
        expect(await store.countPending('shop1')).toBe(2);
      });
    });

    describe('status', () => {
      it('applies forward moves, refuses backward ones and keeps the history in order', async () => {
        const { store } = await fresh();
        const { message } = await store.enqueue(newMessage());
        const id = message.id;
        const step = async (status: MessageStatus, at: number, extra: Partial<StatusChange> = {}) =>
          (await store.setStatus([{ id, status, at, ...extra }]))[0];
        expect(await step('sent', 10, { detail: { attempt: 1 } })).toBe(true);
        expect(await step('sent', 20, { detail: { attempt: 2 } })).toBe(true); // redelivery
        expect(await step('queued', 25)).toBe(false);
        expect(await step('received', 30)).toBe(true);
        expect(await step('sent', 35)).toBe(false); // not after received
        expect(await step('received', 36)).toBe(false);
        expect(await step('expired', 37)).toBe(false);
        expect(await step('cancelled', 38)).toBe(false);
        expect(await step('handled', 40, { result: { exitCode: 0, tail: 'ok' } })).toBe(true);
        for (const s of Object.values(MessageStatus)) expect(await step(s, 50)).toBe(false);
        const m = await store.getMessage(id);
        expect(m).toMatchObject({ status: 'handled', updatedAt: 40, result: { exitCode: 0, tail: 'ok' } });
        expect(await store.getHistory(id)).toEqual([
          { status: 'queued', at: 1_000 },
          { status: 'sent', at: 10, detail: { attempt: 1 } },
          { status: 'sent', at: 20, detail: { attempt: 2 } },
          { status: 'received', at: 30 },
          { status: 'handled', at: 40 },
        ]);
      });

      it('applies a list in order, reports each change, and ignores unknown ids', async () => {
        const { store } = await fresh();
        const [a, b] = await enqueueMany(store, [newMessage(), newMessage()]);
        const applied = await store.setStatus([
          { id: a!.id, status: 'sent', at: 2 },
          { id: a!.id, status: 'received', at: 3 },
          { id: b!.id, status: 'failed', at: 4, result: { exitCode: 2 } },
          { id: a!.id, status: 'rejected', at: 5, detail: { reason: 'no rule' } },
          { id: b!.id, status: 'handled', at: 6 },
          { id: 'ghost', status: 'sent', at: 7 },
        ]);
        expect(applied).toEqual([true, true, true, true, false, false]);
        expect(await store.getMessage(b!.id)).toMatchObject({ status: 'failed', result: { exitCode: 2 } });
        expect((await store.getHistory(a!.id)).map((h) => h.status)).toEqual(['queued', 'sent', 'received', 'rejected']);
        expect(await store.setStatus([])).toEqual([]);
      });

      it('expired and cancelled end only a message that was not received', async () => {
        const { store } = await fresh();
        const [a, b, c] = await enqueueMany(store, [newMessage(), newMessage(), newMessage()]);
        await store.setStatus([
          { id: b!.id, status: 'sent', at: 2 },
          { id: c!.id, status: 'received', at: 2 },
        ]);
        expect(
          await store.setStatus([
            { id: a!.id, status: 'expired', at: 3 },
            { id: b!.id, status: 'cancelled', at: 3 },
            { id: c!.id, status: 'expired', at: 3 },
            { id: a!.id, status: 'sent', at: 4 },
          ]),
        ).toEqual([true, true, false, false]);
      });

      it('rejects an unknown status without applying anything', async () => {
        const { store } = await fresh();
        const { message } = await store.enqueue(newMessage());
        await expect(
          store.setStatus([
            { id: message.id, status: 'sent', at: 2 },
            { id: message.id, status: 'bogus' as MessageStatus, at: 3 },
          ]),
        ).rejects.toMatchObject({ code: 'DW_STORE_INVALID' });
        expect((await store.getMessage(message.id))?.status).toBe('queued');
      });

      it('follows canTransition for any sequence of changes', async () => {
        const { store } = await fresh();
        const statuses = Object.values(MessageStatus);
        await fc.assert(
          fc.asyncProperty(
            fc.array(fc.array(fc.constantFrom(...statuses), { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 4 }),
            async (calls) => {
              const { message } = await store.enqueue(newMessage());
              let current: MessageStatus = 'queued';
              const expectedHistory: MessageStatus[] = ['queued'];
              let at = 1_000;
              for (const call of calls) {
                const expected = call.map((s) => {
                  const ok = canTransition(current, s);
                  if (ok) {
                    current = s;
                    expectedHistory.push(s);
                  }
                  return ok;
                });
                expect(await store.setStatus(call.map((status) => ({ id: message.id, status, at: ++at })))).toEqual(expected);
              }
              expect((await store.getMessage(message.id))?.status).toBe(current);
              expect((await store.getHistory(message.id)).map((h) => h.status)).toEqual(expectedHistory);
            },
          ),
          { numRuns: 40 },
        );
      });
    });

    describe('lazy status changes', () => {
      it('any mix of lazy and durable changes, issued together, ends as one call per change would', async () => {
        const { store } = await fresh();
        const statuses = Object.values(MessageStatus);
        await fc.assert(
          fc.asyncProperty(
            fc.array(fc.record({ status: fc.constantFrom(...statuses), lazy: fc.boolean() }), { minLength: 1, maxLength: 6 }),
            async (calls) => {
              const { message } = await store.enqueue(newMessage());
              let current: MessageStatus = 'queued';
              const expectedHistory: Array<{ status: MessageStatus; at: number }> = [{ status: 'queued', at: 1_000 }];
              let at = 1_000;
              const expected = calls.map(({ status }) => {
                at++;
                const ok = canTransition(current, status);
                if (ok) {
                  current = status;
                  expectedHistory.push({ status, at });
                }
                return ok;
              });
              at = 1_000;
              // Not awaited one by one: the lazy ones are held while the durable ones are issued.
              const outcomes = await Promise.all(calls.map(({ status, lazy }) => store.setStatus([{ id: message.id, status, at: ++at }], lazy ? { lazy } : undefined)));
              expect(outcomes.map(([applied]) => applied)).toEqual(expected);
              expect((await store.getMessage(message.id))?.status).toBe(current);
              expect((await store.getHistory(message.id)).map(({ status, at }) => ({ status, at }))).toEqual(expectedHistory);
            },
          ),
          { numRuns: 40 },
        );
      });

      it('a lazy sent and received go with the outcome: every step an event, in order, with its own time', async () => {
        const { store } = await fresh();
        const { message } = await store.enqueue(newMessage({ id: 'lz1' }));
        const since = await store.lastEventSeq();
        const sent = store.setStatus([{ id: 'lz1', status: 'sent', at: 1_100, detail: { offset: 5 } }], { lazy: true });
        const received = store.setStatus([{ id: 'lz1', status: 'received', at: 1_200 }], { lazy: true });
        const handled = store.setStatus([{ id: 'lz1', status: 'handled', at: 1_300, detail: { exitCode: 0 }, result: { exitCode: 0, tail: 'ok' } }]);
        expect(await Promise.all([sent, received, handled])).toEqual([[true], [true], [true]]);
        expect(await store.getMessage(message.id)).toMatchObject({ status: 'handled', updatedAt: 1_300, result: { exitCode: 0, tail: 'ok' } });
        expect(await store.getHistory('lz1')).toEqual([
          { status: 'queued', at: 1_000 },
          { status: 'sent', at: 1_100, detail: { offset: 5 } },
          { status: 'received', at: 1_200 },
          { status: 'handled', at: 1_300, detail: { exitCode: 0 } },
        ]);
        const events = await store.eventsAfter(since, 10);
        expect(events.map((e) => [e.type, e.at])).toEqual([['message.sent', 1_100], ['message.received', 1_200], ['message.handled', 1_300]]);
        expect(events[0]).toMatchObject({ messageId: 'lz1', data: { message: { id: 'lz1', status: 'sent', detail: { offset: 5 } } } });
      });

      it('a lazy received counts before a durable change: no expiry, no cancel, not overdue', async () => {
        const { store } = await fresh();
        const [a, b, c] = await enqueueMany(store, [newMessage(), newMessage({ deadlineAt: 1_500 }), newMessage()]);
        const heldA = store.setStatus([{ id: a!.id, status: 'received', at: 1_100 }], { lazy: true });
        const heldB = store.setStatus([{ id: b!.id, status: 'received', at: 1_100 }], { lazy: true });
        const heldC = store.setStatus([{ id: c!.id, status: 'received', at: 1_100 }], { lazy: true });
        expect(await store.setStatus([{ id: a!.id, status: 'expired', at: 1_200 }])).toEqual([false]);
        expect(await store.markOverdue(b!.id, 1_600)).toBe(false);
        expect(await store.removeDevice('shop1', 1_700)).toBe(false);
        expect(await Promise.all([heldA, heldB, heldC])).toEqual([[true], [true], [true]]);
        for (const m of [a, b, c]) expect(await store.getMessage(m!.id)).toMatchObject({ status: 'received', overdue: false });
      });

      it('a lazy change alone is written by itself, and by close()', async () => {
        const { store, reopen } = await fresh();
        const [a, b] = await enqueueMany(store, [newMessage(), newMessage()]);
        expect(await store.setStatus([{ id: a!.id, status: 'received', at: 1_100 }], { lazy: true })).toEqual([true]);
        expect((await store.getMessage(a!.id))?.status).toBe('received');
        const held = store.setStatus([{ id: b!.id, status: 'sent', at: 1_100 }], { lazy: true });
        if (!persistent) {
          expect(await held).toEqual([true]);
          return;
        }
        const again = await reopen();
        expect(await held).toEqual([true]);
        expect((await again.getMessage(b!.id))?.status).toBe('sent');
      });
    });

    describe('deadlines and expiry', () => {
      it('finds messages past their deadline and flags each overdue once', async () => {
        const { store } = await fresh();
        const [late2, late1, , none, received, sent] = await enqueueMany(store, [
          newMessage({ deadlineAt: 200 }),
          newMessage({ deadlineAt: 100 }),
          newMessage({ deadlineAt: 500 }),
          newMessage(),
          newMessage({ deadlineAt: 50 }),
          newMessage({ deadlineAt: 150 }),
        ]);
        await store.setStatus([
          { id: received!.id, status: 'received', at: 60 },
          { id: sent!.id, status: 'sent', at: 60 },
        ]);
        expect((await store.dueForDeadline(300, 10)).map((m) => m.id)).toEqual([late1!.id, sent!.id, late2!.id]);
        expect((await store.dueForDeadline(300, 2)).map((m) => m.id)).toEqual([late1!.id, sent!.id]);
        expect(await store.dueForDeadline(100, 10)).toEqual([]); // the deadline itself is still in time
        expect(await store.markOverdue(late1!.id, 300)).toBe(true);
        expect(await store.markOverdue(late1!.id, 301)).toBe(false);
        expect(await store.markOverdue(received!.id, 300)).toBe(false);
        expect(await store.getMessage(late1!.id)).toMatchObject({ overdue: true, status: 'queued' });
        expect((await store.dueForDeadline(300, 10)).map((m) => m.id)).toEqual([sent!.id, late2!.id]);
        expect((await store.getMessage(none!.id))?.overdue).toBe(false);
      });

      it('finds undelivered messages past their expiry', async () => {
        const { store } = await fresh();
        const [a, b, , d] = await enqueueMany(store, [
          newMessage({ expiresAt: 300 }),
          newMessage({ expiresAt: 100 }),
          newMessage({ expiresAt: 900 }),
          newMessage({ expiresAt: 100 }),
          newMessage(),
        ]);
        await store.setStatus([
          { id: a!.id, status: 'sent', at: 5 },
          { id: d!.id, status: 'received', at: 5 },
        ]);
        expect((await store.dueForExpiry(400, 10)).map((m) => m.id)).toEqual([b!.id, a!.id]);
        await store.setStatus([{ id: b!.id, status: 'expired', at: 400 }]);
        expect((await store.dueForExpiry(400, 10)).map((m) => m.id)).toEqual([a!.id]);
        expect(await store.dueForExpiry(100, 10)).toEqual([]);
      });
    });

    describe('load', () => {
      it('1,000 concurrent enqueues all resolve and are all stored', async () => {
        const { store } = await fresh();
        const messages = Array.from({ length: 1_000 }, (_, i) =>
          newMessage({ to: i % 2 ? 'shop1' : 'shop2', body: new Uint8Array(64).fill(i % 256), size: 64 }),
        );
        const results = await Promise.all(messages.map((m) => store.enqueue(m)));
        expect(results.every((r) => r.created)).toBe(true);
        expect(new Set(results.map((r) => r.message.seq)).size).toBe(1_000);
        expect((await store.countPending('shop1')) + (await store.countPending('shop2'))).toBe(1_000);
        const ids = new Set([
          ...(await store.pending('shop1', 0, 2_000)).map((m) => m.id),
          ...(await store.pending('shop2', 0, 2_000)).map((m) => m.id),
        ]);
        for (const m of messages) expect(ids.has(m.id)).toBe(true);
        expect(await store.readInlineBody(messages[999]!.id)).toEqual(new Uint8Array(64).fill(999 % 256));
      });
    });

    describe('lifecycle', () => {
      it('close is idempotent, settles writes already queued, and refuses new work', async () => {
        const { store, reopen } = await fresh();
        const m = newMessage();
        const queued = store.enqueue(m);
        const closing = store.close();
        expect(store.close()).toBe(closing);
        await closing;
        await expect(queued).resolves.toMatchObject({ created: true });
        await expect(store.enqueue(newMessage())).rejects.toMatchObject({ code: 'DW_STORE_CLOSED' });
        await expect(store.getMessage(m.id)).rejects.toMatchObject({ code: 'DW_STORE_CLOSED' });
        if (persistent) {
          const again = await reopen();
          expect((await again.getMessage(m.id))?.status).toBe('queued');
        }
      });

      it.skipIf(!persistent)('keeps everything across close and reopen', async () => {
        const { store, reopen } = await fresh();
        await store.createDevice({ name: 'shop1', createdAt: 1, enrollSecretHash: 'h' });
        await store.enrollDevice('shop1', KEY_A, 2);
        await store.createToken({ name: 'web', hash: 'aa', to: '*', createdAt: 1 });
        const body = enc.encode('<order/>');
        const { message } = await store.enqueue(newMessage({ body, size: body.byteLength, idempotencyKey: 'k' }));
        await store.setStatus([{ id: message.id, status: 'sent', at: 5, detail: { link: 1 } }]);
        const before = await store.getMessage(message.id);

        const again = await reopen();
        expect(await again.getDeviceByKey(KEY_A)).toMatchObject({ name: 'shop1', enrolledAt: 2 });
        expect(await again.getTokenByHash('aa')).toMatchObject({ name: 'web' });
        expect(await again.getMessage(message.id)).toEqual(before);
        expect(await again.readInlineBody(message.id)).toEqual(body);
        expect(await again.getHistory(message.id)).toEqual([
          { status: 'queued', at: 1_000 },
          { status: 'sent', at: 5, detail: { link: 1 } },
        ]);
        expect((await again.enqueue(newMessage({ idempotencyKey: 'k' }))).created).toBe(false);
        const next = await again.enqueue(newMessage());
        expect(next.message.seq).toBeGreaterThan(message.seq);
      });
    });
  });
}

/** The event log and webhook cursors: part of the contract every backend passes. */
export function eventContract(name: string, makeStore: (dir: string) => Promise<Store>): void {
  describe(`${name}: events`, () => {
    it('writes message events with their status changes, in order, and presence events on request', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'dw-events-'));
      onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
      const store = await makeStore(dir);
      onTestFinished(() => store.close());
      await store.createDevice({ name: 'shop', createdAt: 1 });
      const m = newMessage({ id: 'ev1', to: 'shop', from: 'web' });
      await store.enqueue(m);
      await store.setStatus([{ id: 'ev1', status: 'sent', at: 10 }]);
      await store.setStatus([{ id: 'ev1', status: 'queued' as never, at: 11 }]).catch(() => []);
      await store.setStatus([{ id: 'ev1', status: 'received', at: 12 }]);
      await store.setStatus([{ id: 'ev1', status: 'sent', at: 13 }]); // refused: no event
      expect(await store.markOverdue('ev1', 14)).toBe(false); // already received
      await store.setStatus([{ id: 'ev1', status: 'failed', at: 15, detail: { code: 'DW_EXEC_FAILED', exitCode: 3 } }]);
      await store.appendEvents([{ type: 'device.offline', device: 'shop', at: 16, data: { device: { name: 'shop', online: false } } }]);
      const events = await store.eventsAfter(0, 100);
      expect(events.map((e) => e.type)).toEqual(['message.queued', 'message.sent', 'message.received', 'message.failed', 'device.offline']);
      expect(events.map((e) => e.seq)).toEqual([...events.map((e) => e.seq)].sort((a, b) => a - b));
      expect(events[3]).toMatchObject({ device: 'shop', messageId: 'ev1', sender: 'web', at: 15, data: { message: { id: 'ev1', status: 'failed', detail: { exitCode: 3 } } } });
      expect(await store.eventsAfter(events[2]!.seq, 1)).toEqual([events[3]]);
      expect(await store.lastEventSeq()).toBe(events[4]!.seq);
    });

    it('overdue is an event once; webhook cursors move only on success or abandonment', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'dw-events-'));
      onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
      const store = await makeStore(dir);
      onTestFinished(() => store.close());
      await store.createDevice({ name: 'shop', createdAt: 1 });
      await store.enqueue(newMessage({ id: 'ev2', to: 'shop', from: 'web', deadlineAt: 5 }));
      expect(await store.markOverdue('ev2', 6)).toBe(true);
      expect(await store.markOverdue('ev2', 7)).toBe(false);
      const events = await store.eventsAfter(0, 100);
      expect(events.map((e) => e.type)).toEqual(['message.queued', 'message.overdue']);
      expect(await store.webhookCursor('web')).toBe(0);
      await store.recordWebhookAttempt({ token: 'web', seq: events[0]!.seq, at: 8, ok: false, status: 503 });
      expect(await store.webhookCursor('web')).toBe(0);
      await store.recordWebhookAttempt({ token: 'web', seq: events[0]!.seq, at: 9, ok: true, status: 200 });
      expect(await store.webhookCursor('web')).toBe(events[0]!.seq);
      await store.recordWebhookAttempt({ token: 'web', seq: events[1]!.seq, at: 10, ok: false, error: 'ECONNREFUSED', abandoned: true });
      expect(await store.webhookCursor('web')).toBe(events[1]!.seq);
      await store.skipWebhookEvents('other', events[1]!.seq);
      expect(await store.webhookCursor('other')).toBe(events[1]!.seq);
      const attempts = await store.webhookAttempts('web', 10);
      expect(attempts.map((a) => [a.ok, a.status ?? a.error, a.abandoned ?? false])).toEqual([
        [false, 'ECONNREFUSED', true],
        [true, 200, false],
        [false, 503, false],
      ]);
    });
  });
}
