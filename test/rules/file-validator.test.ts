/**
 * The rules-file validator generated at build time (ajv standalone code, written by
 * scripts/bundle.mjs) is the schema's: made from the schema in load.ts as it is now, and
 * giving the answers and errors ajv gives when it compiles the schema itself.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { fileSchema } from '../../src/rules/load.js';
import { fileValidatorFor, GENERATED_VALIDATOR } from '../../src/rules/file-validator.js';

const generatedPath = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'rules', GENERATED_VALIDATOR);

const SAMPLES: unknown[] = [
  { rules: [{ rule: 'tcp => drop', dev: 'veth0', hook: 'egress' }] },
  { seed: 7, dev: 'eth0', hook: 'xdp', rules: [{ match: 'udp', set: { 'ip.ttl': 1 }, probability: 0.5, every: 3 }] },
  { rules: [] },
  { rules: [{ rule: 'tcp => drop', bogus: 1 }] },
  { rules: [{ hook: 'sideways' }] },
  { rules: [{ probability: 0 }] },
  { rules: [{ action: 'explode' }] },
  { rules: [{ set: {} }] },
  { seed: -1, rules: [{}] },
  { rules: 'tcp => drop' },
  { rule: 'tcp => drop' },
  [1, 2],
];

test('the build wrote the rules-file validator from the schema load.ts has now', () => {
  assert.ok(existsSync(generatedPath), `${generatedPath} is missing: npm run build writes it`);
  const generated = createRequire(import.meta.url)(generatedPath) as { schemaJson: string; validate: unknown };
  assert.equal(generated.schemaJson, JSON.stringify(fileSchema));
  assert.equal(fileValidatorFor(fileSchema), generated.validate, 'the generated validator is the one used');
});

test('the generated validator answers as ajv compiling the schema does, errors included', () => {
  const compiled = new Ajv({ allErrors: false, strict: true, allowUnionTypes: true }).compile(fileSchema);
  const generated = fileValidatorFor(fileSchema);
  for (const doc of SAMPLES) {
    const a = compiled(doc), b = generated(doc);
    assert.equal(b, a, JSON.stringify(doc));
    assert.deepEqual(generated.errors ?? null, compiled.errors ?? null, JSON.stringify(doc));
  }
  assert.ok(SAMPLES.some((d) => compiled(d)) && SAMPLES.some((d) => !compiled(d)));
});

test('a validator made from another schema is not used: the schema is compiled instead', () => {
  const other = { ...fileSchema, required: ['rules', 'seed'] };
  const v = fileValidatorFor(other);
  assert.equal(v({ rules: [{ rule: 'tcp => drop' }] }), false);
  assert.equal(v({ seed: 1, rules: [{ rule: 'tcp => drop' }] }), true);
});
