/**
 * `netmangle run` as a user runs it, for the fault lab tests: spawned from bin/netmangle with
 * any options, ready once it prints "attached", stopped with SIGINT; its final counter lines
 * (`rule NAME: matched=… acted=…`) parsed.
 */
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Lab } from '../../src/lab/index.js';
import { scaled } from '../helpers/kernel.js';

const BIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'netmangle');

/**
 * h1 ── sw ── h2 with h1 sending finished checksums (tx offload off) and h2 verifying every one
 * it receives (rx offload off): the receiver's checksum error counters then count what the
 * rules broke or fixed.
 */
export const CHECKSUM_LAB: Parameters<typeof Lab.up>[0] = {
  switch: 'sw',
  hosts: { h1: {}, h2: {} },
  links: [
    { a: { host: 'h1', tx_checksum: 'off' }, b: 'sw' },
    { a: { host: 'h2', rx_checksum: 'off' }, b: 'sw' },
  ],
};

export interface RunningRule {
  /** SIGINT, wait for exit; returns the counters of each rule and everything printed. */
  stop(): Promise<{ counters: Record<string, Record<string, number>>; output: string; code: number | null }>;
  output(): string;
}

export async function startRun(args: string[], timeoutMs = scaled(20_000)): Promise<RunningRule> {
  const child = spawn(process.execPath, [BIN, 'run', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
  const closed = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`netmangle run did not attach: ${out}`)), timeoutMs);
      const check = () => {
        if (/^attached/m.test(out)) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout.on('data', check);
      void closed.then((code) => {
        clearTimeout(timer);
        reject(new Error(`netmangle run exited (${code}) before attaching: ${out}`));
      });
    });
  } catch (err) {
    if (child.exitCode === null) child.kill('SIGKILL');
    await closed;
    throw err;
  }
  return {
    output: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      const killer = setTimeout(() => child.kill('SIGKILL'), scaled(10_000));
      const code = await closed;
      clearTimeout(killer);
      const counters: Record<string, Record<string, number>> = {};
      for (const m of out.matchAll(/^rule (\S+): (.*)$/gm)) {
        counters[m[1]!] = Object.fromEntries([...m[2]!.matchAll(/(\w+)=(\d+)/g)].map((p) => [p[1]!, Number(p[2])]));
      }
      return { counters, output: out, code };
    },
  };
}
