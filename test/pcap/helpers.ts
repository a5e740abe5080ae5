/** Shared by the pcap tests: fixtures, expected packet lists, and synthetic packets. */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CapturePacket } from '../../src/pcap/index.js';

// dist/test/pcap → repository root
export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const fixtureDir = join(root, 'test', 'fixtures', 'pcap');

export function fixture(name: string): string {
  return join(fixtureDir, name);
}

/** A packet as the fixture script recorded tshark reading it. */
export interface ExpectedPacket {
  tsSec: number;
  tsNsec: number;
  caplen: number;
  origLen: number;
  interfaceId: number;
  comment: string | null;
  hex: string;
}

export function expectedPackets(name: string): ExpectedPacket[] {
  return (JSON.parse(readFileSync(fixture(`${name}.expected.json`), 'utf8')) as { packets: ExpectedPacket[] }).packets;
}

/** The fields of a read packet in the shape of ExpectedPacket, for deepEqual. */
export function asExpected(p: CapturePacket): ExpectedPacket {
  return {
    tsSec: p.tsSec,
    tsNsec: p.tsNsec,
    caplen: p.caplen,
    origLen: p.origLen,
    interfaceId: p.interfaceId,
    comment: p.comment ?? null,
    hex: Buffer.from(p.data).toString('hex'),
  };
}

/** A deterministic Ethernet/IPv4/UDP-looking frame of `length` bytes (≥ 14) for synthetic captures. */
export function syntheticFrame(i: number, length: number): Uint8Array {
  const f = new Uint8Array(length);
  for (let k = 0; k < length; k++) f[k] = (i * 31 + k * 7) & 0xff;
  f[12] = 0x08;
  f[13] = 0x00;
  return f;
}
