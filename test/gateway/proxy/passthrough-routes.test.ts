import t from 'tap';
import { classifyPassthrough, passthroughConfigSchema } from '../../../gateway/proxy/passthrough-routes.js';

const closed = passthroughConfigSchema.parse({});

void t.test('per-request engine routes are forwarded', (t) => {
  for (const path of [
    '/tokenize',
    '/detokenize',
    '/v1/embeddings',
    '/v1/responses',
    '/v1/responses/resp_123',
    '/v1/responses/resp_123/cancel',
    '/v1/messages',
    '/v1/audio/transcriptions',
    '/v2/rerank',
    '/version',
  ])
    t.equal(classifyPassthrough(path, closed), 'forward', path);
  t.end();
});

void t.test('state-changing and dev-mode routes are admin routes', (t) => {
  for (const path of [
    '/v1/load_lora_adapter',
    '/v1/unload_lora_adapter',
    '/reset_prefix_cache',
    '/sleep',
    '/wake_up',
    '/collective_rpc',
    '/start_profile',
    '/scale_elastic_ep',
    '/server_info',
  ])
    t.equal(classifyPassthrough(path, closed), 'admin', path);
  t.end();
});

void t.test('anything else is unknown, including near misses of admin routes', (t) => {
  for (const path of ['/v1/made_up', '/v1/load_lora_adapter/', '//v1/load_lora_adapter', '/V1/embeddings', '/'])
    t.equal(classifyPassthrough(path, closed), 'unknown', path);
  t.equal(classifyPassthrough('/v1/responses/a/b', closed), 'unknown', 'only one id segment');
  t.end();
});

void t.test('server.passthrough.allowAdminRoutes opens exact paths', (t) => {
  const open = passthroughConfigSchema.parse({ allowAdminRoutes: ['/reset_prefix_cache', '/v1/custom'] });
  t.equal(classifyPassthrough('/reset_prefix_cache', open), 'forward');
  t.equal(classifyPassthrough('/v1/custom', open), 'forward');
  t.equal(classifyPassthrough('/sleep', open), 'admin', 'the others stay closed');
  t.throws(() => passthroughConfigSchema.parse({ allowAdminRoutes: ['sleep'] }), /must be a path starting with \//);
  t.throws(() => passthroughConfigSchema.parse({ allowAdminRoutes: ['/x?y'] }));
  t.end();
});
