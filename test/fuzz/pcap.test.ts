/**
 * Fuzzes the pcap and pcapng readers with captures mutated from the fixtures: each is read to
 * its end or refused with one CaptureError.
 */
import { test } from 'node:test';
import { readdirSync, readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { readAllPackets } from '../../src/pcap/index.js';
import { assertNoFindings, fuzz, fuzzTestOptions, judge, mutateBytes, repoPath } from './engine.js';

const dir = repoPath('test/fixtures/pcap');
const CORPUS: Uint8Array[] = readdirSync(dir).filter((f) => /\.pcap(ng)?$/.test(f)).map((f) => new Uint8Array(readFileSync(`${dir}/${f}`)));

test('fuzz: pcap and pcapng readers', fuzzTestOptions('pcap'), async (t) => {
  const report = await fuzz({
    name: 'pcap',
    corpus: CORPUS,
    mutate: (rng, input, corpus) => mutateBytes(rng, input, corpus),
    check: async (bytes) => {
      try {
        // In small chunks too, so records cut across chunk boundaries are read the same way.
        const chunks = bytes.length > 4096 ? [Buffer.from(bytes)] : Array.from({ length: Math.ceil(bytes.length / 7) }, (_, i) => Buffer.from(bytes.subarray(i * 7, i * 7 + 7)));
        await readAllPackets(Readable.from(chunks));
        return undefined;
      } catch (err) {
        return judge(err, [1, 2]);
      }
    },
    encode: (b) => b,
    decode: (b) => b,
    ext: 'pcap',
  });
  assertNoFindings(report, t);
});
