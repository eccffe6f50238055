import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { agentVersionOf, encodeMessage, MAX_AGENT_VERSION, MessageDecoder, MessageType } from '../../src/protocol/messages.js';
import { agentProduct, buildInfo } from '../../src/shared/version.js';
import { ROOT } from '../helpers/cli.js';

/** The hex block that follows "Test vector: `HELLO" in PROTOCOL 7.3. */
function protocolVector(): Uint8Array {
  const doc = fs.readFileSync(path.join(ROOT, 'docs', 'PROTOCOL.md'), 'utf8');
  const at = doc.indexOf('Test vector: `HELLO');
  const block = /```\n([0-9a-f \n]+)```/.exec(doc.slice(at))![1]!;
  return Uint8Array.from(block.trim().split(/\s+/).map((h) => parseInt(h, 16)));
}

describe('HELLO carries the agent version (PROTOCOL 7.3)', () => {
  it('encodes byte for byte as the test vector, and decodes back', () => {
    const header = { agent: 'dropwire/0.1.0 (0123abcd4567)', partial: [{ id: 'mx1', have: 5 }] };
    const bytes = Buffer.concat(encodeMessage(MessageType.HELLO, header));
    expect(new Uint8Array(bytes)).toEqual(protocolVector());
    const d = new MessageDecoder();
    for (const b of bytes) d.push(Uint8Array.of(b)); // one byte at a time
    const m = d.next()!;
    expect(m.type).toBe(MessageType.HELLO);
    expect(m.header).toEqual(header);
  });

  it('an old agent\'s HELLO still decodes, and the relay records what it says', () => {
    const d = new MessageDecoder();
    for (const p of encodeMessage(MessageType.HELLO, { agent: 'dropwire/0.1', partial: [] })) d.push(p);
    const m = d.next()!;
    expect(m.header).toEqual({ agent: 'dropwire/0.1', partial: [] });
    expect(agentVersionOf('dropwire/0.1')).toBe('dropwire/0.1');
  });

  it('the relay keeps at most 128 characters, without control characters; empty records nothing', () => {
    expect(agentVersionOf(`  dropwire/1.0\u0000\n (x)\u007f `)).toBe('dropwire/1.0 (x)');
    expect(agentVersionOf('x'.repeat(500))).toHaveLength(MAX_AGENT_VERSION);
    expect(agentVersionOf('\u0001\t ')).toBeUndefined();
  });

  it('the agent sends dropwire/<version> (<12 hex digits of the commit>)', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(buildInfo().version).toBe(pkg.version);
    expect(agentProduct()).toMatch(new RegExp(`^dropwire/${pkg.version.replace(/\./g, '\\.')} \\(([0-9a-f]{12}(-dirty)?|unknown)\\)$`));
  });
});
