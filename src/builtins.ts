/**
 * Node.js modules that only some commands need, loaded on first use: each costs a few
 * milliseconds at start, and `netmangle run` with ordinary rules needs neither.
 */
import { createRequire } from 'node:module';

const load = createRequire(import.meta.url);

export const childProcess = (): typeof import('node:child_process') => load('node:child_process') as typeof import('node:child_process');
export const workerThreads = (): typeof import('node:worker_threads') => load('node:worker_threads') as typeof import('node:worker_threads');
