// Point Neon's serverless driver at neonproxy's http_listen.
// NEONPROXY_HTTP is http_listen's host:port; NEONPROXY_HTTP_TLS is "true" when
// neonproxy serves it over TLS (tls.cert_file / tls.key_file set).
import { neonConfig } from '@neondatabase/serverless';
import ws from 'ws';

const proxy = process.env.NEONPROXY_HTTP;
const secure = process.env.NEONPROXY_HTTP_TLS === 'true';

neonConfig.webSocketConstructor = ws;              // Node.js < 22 has no global WebSocket
neonConfig.wsProxy = () => `${proxy}/v2`;          // Pool and Client: pgwire over WebSocket
neonConfig.useSecureWebSocket = secure;            // wss:// or ws://
neonConfig.fetchEndpoint = () => `${secure ? 'https' : 'http'}://${proxy}/sql`; // neon(): SQL over HTTP
