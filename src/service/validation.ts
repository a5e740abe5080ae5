/**
 * A schema refusal as one line a person can act on: the first thing wrong, named by its field
 * (`rules[0]`, `[2].hook` in a populate list), with the accepted values or fields as the hint.
 */
import { HttpError } from './errors.js';

/** The parts of an ajv error we read (ajv runs with `verbose`, so the failing schema is there). */
export interface SchemaError {
  keyword: string;
  instancePath: string;
  params: Record<string, unknown>;
  message?: string;
  parentSchema?: { description?: string; properties?: Record<string, unknown>; enum?: unknown[]; type?: unknown };
}

/** `/rules/0` → `rules[0]`; `/3/hook` → `[3].hook`. */
export function fieldPath(instancePath: string, extra?: string): string {
  const parts = instancePath.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  if (extra !== undefined) parts.push(extra);
  let out = '';
  for (const p of parts) out += /^\d+$/.test(p) ? `[${p}]` : out === '' ? p : `.${p}`;
  return out;
}

function what(field: string, context: string): string {
  if (field !== '') return field;
  return context === 'body' ? 'the body' : context;
}

/** The one error to report out of ajv's list for request part `context` (body, params, querystring). */
export function schemaError(errors: readonly SchemaError[], context: string, body?: unknown): HttpError {
  // An unknown or missing field says the most; then the deepest error (the anyOf summary last).
  // A field with alternatives (a number or "5%") is best described by the alternatives' summary.
  const deepest = [...errors].sort((a, b) => b.instancePath.length - a.instancePath.length)[0];
  const pick = errors.find((e) => e.keyword === 'additionalProperties')
    ?? errors.find((e) => e.keyword === 'required')
    ?? errors.find((e) => e.keyword === 'anyOf' && e.instancePath === deepest?.instancePath)
    ?? deepest;
  if (!pick) return new HttpError(400, `${context} does not match the schema`);
  const field = fieldPath(pick.instancePath);
  const known = (e: SchemaError) => Object.keys(e.parentSchema?.properties ?? {}).join(', ');
  switch (pick.keyword) {
    case 'additionalProperties': {
      const name = String(pick.params.additionalProperty);
      return new HttpError(400, `unknown field "${name}"${field ? ` in ${field}` : ''}`, `known fields: ${known(pick)}`, { field: fieldPath(pick.instancePath, name) });
    }
    case 'required': {
      const name = String(pick.params.missingProperty);
      return new HttpError(400, `missing field "${name}"${field ? ` in ${field}` : ''}`, undefined, { field: fieldPath(pick.instancePath, name) });
    }
    case 'enum':
      return new HttpError(400, `${what(field, context)} must be one of ${(pick.params.allowedValues as unknown[]).map(String).join(', ')}`, undefined, { field });
    case 'type':
      return new HttpError(400, `${what(field, context)} must be ${describeType(pick.params.type)}`, pick.parentSchema?.description, { field });
    case 'pattern':
      if (field === 'name' || field.endsWith('.name') || context === 'params') {
        return new HttpError(400, `${what(field, context)}: not a fault name`, 'a name is 1 to 63 letters, digits, ".", "_" or "-", starting with a letter or digit', { field });
      }
      return new HttpError(400, `${what(field, context)} ${pick.message ?? 'is not valid'}`, pick.parentSchema?.description, { field });
    case 'anyOf':
      return new HttpError(400, `${what(field, context)}: ${JSON.stringify(valueAt(body, pick.instancePath))} is not valid`, pick.parentSchema?.description, { field });
    case 'minProperties':
      return new HttpError(400, `${what(field, context)} changes nothing`, 'give at least one field to change');
    default:
      return new HttpError(400, `${what(field, context)} ${pick.message ?? 'is not valid'}`, pick.parentSchema?.description, { field });
  }
}

function describeType(type: unknown): string {
  const t = Array.isArray(type) ? type.join(' or ') : String(type);
  return /^(array|object|integer)/.test(t) ? `an ${t}` : `a ${t}`;
}

/** The value at a JSON pointer in the body, for the message. */
function valueAt(body: unknown, pointer: string): unknown {
  let v = body;
  for (const p of pointer.split('/').slice(1)) v = (v as Record<string, unknown> | undefined)?.[p.replace(/~1/g, '/').replace(/~0/g, '~')];
  return v;
}
