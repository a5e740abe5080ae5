/** Shared assertions for rule-language tests. */
import assert from 'node:assert/strict';
import { RuleError } from '../../src/rules/errors.js';
import { parseRuleLine } from '../../src/rules/load.js';
import type { Hook, Rule } from '../../src/rules/ast.js';

/** Parses and checks one rule for a hook (egress unless told). */
export function rule(text: string, hook: Hook = 'egress'): Rule {
  return parseRuleLine(text, { dev: 'veth0', hook }).groups[0]!.rules[0]!;
}

/**
 * Asserts that `text` is refused with a RuleError whose reason matches `reason` and whose caret
 * sits under the first occurrence (or the `nth`) of `under` in the text.
 */
export function assertRuleError(text: string, reason: RegExp, under: string, opts: { hook?: Hook; nth?: number } = {}): RuleError {
  let caught: unknown;
  try {
    rule(text, opts.hook);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof RuleError, `expected a RuleError for ${JSON.stringify(text)}, got ${String(caught)}`);
  const err = caught;
  assert.match(err.reason, reason);
  assert.equal(err.exitCode, 2);
  // An empty `under` means the end of the text (a missing part): a one-column caret there.
  let start = under === '' ? text.length : -1;
  for (let n = 0; under !== '' && n <= (opts.nth ?? 0); n++) start = text.indexOf(under, start + 1);
  assert.ok(start >= 0, `test bug: ${JSON.stringify(under)} not in the text`);
  assert.deepEqual(err.span, { start, end: start + under.length }, `caret under ${JSON.stringify(text.slice(err.span.start, err.span.end))}`);
  const lines = err.message.split('\n');
  assert.equal(lines[1], `  ${text}`);
  assert.equal(lines[2], `  ${' '.repeat(start)}${'^'.repeat(Math.max(1, under.length))}`);
  return err;
}
