/**
 * The HTTP API of `netmangle serve`: fastify routes over the fault table, a JSON schema per
 * route (validated by fastify's ajv, published at /openapi.json), errors as `{error, hint, at}`.
 *
 *   GET    /faults                   every fault
 *   POST   /faults                   create one (201)
 *   GET    /faults/{name}            one fault, with its counters
 *   PATCH  /faults/{name}            change rules or triggers (the program replaced), or the lease
 *   DELETE /faults/{name}            detach it (204)
 *   POST   /faults/{name}/renew      extend its lease
 *   POST   /populate                 make a list of faults exist (idempotent)
 *   POST   /reset                    detach everything
 *   GET    /version, /metrics, /openapi.json
 */
import { release } from 'node:os';
import swagger from '@fastify/swagger';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import { probeFeaturesCached } from '../kernel/probe.js';
import { toHttpError, HttpError } from './errors.js';
import type { FaultTable } from './faults.js';
import { checkAuthorization } from './listen.js';
import { METRICS_CONTENT_TYPE, renderMetrics } from './metrics.js';
import {
  sharedSchemas, nameParams, type FaultPatch, type FaultSpec,
} from './schemas.js';
import { schemaError, type SchemaError } from './validation.js';

/** Bodies larger than this get 413: a fault is a few hundred bytes, a populate list of 1024 well under it. */
export const BODY_LIMIT = 1024 * 1024;

export const API_VERSION = 1;

export interface ServerOptions {
  table: FaultTable;
  /** Required on every request when set (TCP listeners). */
  token?: string;
  version: string;
}

const errorResponses = Object.fromEntries(
  [400, 401, 403, 404, 409, 413, 415, 422, 500, 503].map((code) => [code, { $ref: 'Error#' }]),
);

function reply(schema: Record<number, unknown>, more: Record<string, unknown> = {}) {
  return { response: { ...schema, ...errorResponses }, ...more };
}

/** A JSON parse error as "the body is not JSON: … (at character N)". */
function parseJson(text: string): unknown {
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    const m = /position (\d+)/.exec((err as Error).message);
    const where = m ? ` at character ${Number(m[1]) + 1}` : '';
    throw new HttpError(400, `the body is not JSON: ${(err as Error).message.replace(/ in JSON at position \d+.*$/, '')}${where}`, 'send a JSON object (Content-Type: application/json)', m ? { column: Number(m[1]) + 1 } : undefined);
  }
}

function send(res: FastifyReply, err: HttpError): FastifyReply {
  if (err.status === 401) res.header('www-authenticate', 'Bearer realm="netmangle"');
  return res.code(err.status).type('application/json; charset=utf-8').send(err.body());
}

export async function buildServer(opts: ServerOptions): Promise<FastifyInstance> {
  const { table } = opts;
  const app = Fastify({
    logger: false,
    bodyLimit: BODY_LIMIT,
    // Keep-alive connections must not hold the service open on SIGTERM.
    forceCloseConnections: true,
    return503OnClosing: true,
    ajv: {
      // Unknown fields are an error, not silently dropped; "3" is not a number.
      customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false, verbose: true, strict: false },
    },
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'netmangle control service',
        version: opts.version,
        description: 'Faults (named rule sets compiled to eBPF and attached to an interface hook), created, changed and removed over HTTP. See docs/service.md.',
      },
      components: opts.token ? { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } } : {},
      security: opts.token ? [{ bearer: [] }] : [],
    },
    refResolver: { buildLocalReference: (json, _base, _fragment, i) => String(json.$id ?? `def-${i}`) },
  });
  for (const s of sharedSchemas) app.addSchema(s);

  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit: BODY_LIMIT }, (_req, body, done) => {
    try {
      done(null, parseJson(body as string));
    } catch (err) {
      done(err as Error, undefined);
    }
  });

  if (opts.token !== undefined) {
    const token = opts.token;
    app.addHook('onRequest', async (req, res) => {
      const verdict = checkAuthorization(req.headers.authorization, token);
      if (verdict === 'unauthorized') return send(res, new HttpError(401, 'this service needs a bearer token', 'send Authorization: Bearer TOKEN (the token in the file serve was given with --token-file)'));
      if (verdict === 'forbidden') return send(res, new HttpError(403, 'the bearer token does not match', 'use the token in the file serve was given with --token-file'));
      return undefined;
    });
  }

  app.setErrorHandler((err: FastifyError & { validation?: SchemaError[]; validationContext?: string }, req, res) => {
    if (err.validation) return send(res, schemaError(err.validation, err.validationContext ?? 'body', err.validationContext === 'params' ? req.params : req.body));
    if (err instanceof HttpError) return send(res, err);
    switch (err.code) {
      case 'FST_ERR_CTP_BODY_TOO_LARGE':
        return send(res, new HttpError(413, `the body is larger than ${BODY_LIMIT} bytes`, 'a fault fits in a few hundred bytes; send big populate lists in parts'));
      case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
        return send(res, new HttpError(415, `the body must be JSON, not ${String((req.headers['content-type'] ?? 'unnamed')).split(';')[0]}`, 'send Content-Type: application/json'));
      case 'FST_ERR_CTP_EMPTY_JSON_BODY':
        return send(res, new HttpError(400, 'the body is empty', 'send a JSON object'));
      case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
        return send(res, new HttpError(400, 'Content-Length does not match the body'));
    }
    if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
      return send(res, new HttpError(err.statusCode, err.message));
    }
    return send(res, toHttpError(err));
  });

  app.setNotFoundHandler((req, res) => send(res, new HttpError(404, `no route ${req.method} ${req.url.split('?')[0]}`, 'GET /openapi.json describes every route')));

  /** Runs a table operation; whatever it throws becomes the HTTP error for it. */
  const run = async <T>(op: () => Promise<T> | T): Promise<T> => {
    try {
      return await op();
    } catch (err) {
      throw toHttpError(err);
    }
  };

  app.get('/faults', { schema: reply({ 200: { type: 'array', items: { $ref: 'Fault#' } } }, { summary: 'every fault' }) }, async () => table.list());

  app.post<{ Body: FaultSpec }>('/faults', {
    schema: reply({ 201: { $ref: 'Fault#' } }, { summary: 'attach a fault', body: { $ref: 'FaultSpec#' } }),
  }, async (req, res) => {
    const fault = await run(() => table.create(req.body));
    return res.code(201).header('location', `/faults/${encodeURIComponent(fault.name)}`).send(fault);
  });

  app.get<{ Params: { name: string } }>('/faults/:name', {
    schema: reply({ 200: { $ref: 'Fault#' } }, { summary: 'one fault, with its counters', params: nameParams }),
  }, async (req) => run(() => table.get(req.params.name)));

  app.patch<{ Params: { name: string }; Body: FaultPatch }>('/faults/:name', {
    schema: reply({ 200: { $ref: 'PatchResult#' } }, { summary: 'change a fault\'s rules, triggers or lease', params: nameParams, body: { $ref: 'FaultPatch#' } }),
  }, async (req) => run(() => table.patch(req.params.name, req.body)));

  app.delete<{ Params: { name: string } }>('/faults/:name', {
    schema: reply({ 204: { type: 'null', description: 'detached' } }, { summary: 'detach a fault', params: nameParams }),
  }, async (req, res) => {
    await run(() => table.remove(req.params.name));
    return res.code(204).send();
  });

  app.post<{ Params: { name: string }; Body: { ttl?: number | string } | undefined }>('/faults/:name/renew', {
    schema: reply({ 200: { $ref: 'Fault#' } }, { summary: 'extend a fault\'s lease (by its ttl, or a new one)', params: nameParams, body: { anyOf: [{ $ref: 'Renew#' }, { type: 'null' }] } }),
  }, async (req) => run(() => table.renew(req.params.name, req.body?.ttl)));

  app.post<{ Body: FaultSpec[] }>('/populate', {
    schema: reply({ 200: { $ref: 'PopulateResult#' } }, { summary: 'make these faults exist; unchanged ones stay attached', body: { $ref: 'Populate#' } }),
  }, async (req) => run(() => table.populate(req.body)));

  app.post('/reset', {
    schema: reply({ 200: { type: 'object', required: ['detached'], properties: { detached: { type: 'array', items: { type: 'string' } } } } }, { summary: 'detach every fault' }),
  }, async () => ({ detached: await run(() => table.reset()) }));

  app.get('/version', { schema: reply({ 200: { $ref: 'Version#' } }, { summary: 'the service and the kernel it runs on' }) }, async () => {
    const probe = probeFeaturesCached();
    return { version: opts.version, api: API_VERSION, pid: process.pid, kernel: release(), node: process.version, paths: probe.attach };
  });

  app.get('/metrics', {
    schema: reply({ 200: { type: 'string', description: 'Prometheus text format 0.0.4' } }, { summary: 'counters per fault and rule, for Prometheus' }),
  }, async (_req, res) => res.type(METRICS_CONTENT_TYPE).send(renderMetrics(table.snapshot())));

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  await app.ready();
  return app;
}
