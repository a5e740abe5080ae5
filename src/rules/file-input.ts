/**
 * A rules file read within the limits of limits.ts: its bytes (bounded however the file behaves:
 * a pipe, a device, /dev/zero) and the YAML dangers that fit in a small file (aliases that
 * expand, nesting deep enough to exhaust the stack of a recursive parser).
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { createRequire } from 'node:module';
import type * as YamlModule from 'yaml';
import type { Document, LineCounter, Node } from 'yaml';
import { UsageError } from '../errors.js';
import { MAX_FILE_BYTES, MAX_YAML_ALIASES, overLimit, overLimitMessage, shorten } from './limits.js';

const requireLazy = createRequire(import.meta.url);

/**
 * A rules file's bytes, at most MAX_FILE_BYTES of them: a regular file is measured before it is
 * read; anything else (a pipe, /dev/stdin, a device such as /dev/zero) is read up to one byte
 * past the limit, so an endless source costs MAX_FILE_BYTES of memory and no more.
 */
export function readRulesBytes(path: string): Buffer {
  const cannot = (err: unknown): never => {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory'
      : code === 'ENXIO' ? 'no device or reader behind it' : code ?? String((err as Error).message);
    throw new UsageError(`cannot read rules file ${shorten(path)}: ${why}`);
  };
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    return cannot(err);
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) return cannot({ code: 'EISDIR' });
    if (st.isFile() && st.size > MAX_FILE_BYTES) throw overLimit(`rules file ${shorten(path)}`, st.size, MAX_FILE_BYTES, 'bytes');
    const buf = Buffer.alloc(MAX_FILE_BYTES + 1);
    let length = 0;
    for (;;) {
      let n: number;
      try {
        n = readSync(fd, buf, length, buf.length - length, null);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') continue;
        return cannot(err);
      }
      if (n === 0) break;
      length += n;
      if (length > MAX_FILE_BYTES) {
        throw new UsageError(`rules file ${shorten(path)} has more than the limit of ${MAX_FILE_BYTES} bytes (docs/limits.md)`);
      }
    }
    return buf.subarray(0, length);
  } finally {
    closeSync(fd);
  }
}

/** Refuses more than MAX_YAML_ALIASES aliases, before they are resolved. */
export function checkAliases(doc: Document, lines: LineCounter, fileName: string): void {
  let count = 0;
  let first: Node | undefined;
  (requireLazy('yaml') as typeof YamlModule).visit(doc, {
    Alias(_key, node) {
      count++;
      if (count > MAX_YAML_ALIASES && !first) first = node;
    },
  });
  if (first) {
    const line = first.range ? lines.linePos(first.range[0]).line : 1;
    throw new UsageError(`${fileName}:${line}: ${overLimitMessage('the file', count, MAX_YAML_ALIASES, 'aliases')}`);
  }
}

/**
 * The YAML library parses and converts recursively: a document nested thousands of levels deep
 * (`[[[[…]]]]`, which fits in a small file) would exhaust the stack. Said as what it is.
 */
export function deepGuard<T>(fileName: string, work: () => T): T {
  try {
    return work();
  } catch (err) {
    if (err instanceof RangeError && /call stack/i.test(err.message)) {
      throw new UsageError(`${fileName}: the YAML is nested too deeply to read`, { hint: 'a rules file needs three levels: the file, rules:, and each rule' });
    }
    throw err;
  }
}

