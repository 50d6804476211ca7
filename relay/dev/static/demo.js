// The /demo page: connects with relay's own browser client and shows what arrives.
import { createRealtimeClient } from '/demo/client/index.js';

const $ = (id) => document.getElementById(id);
let client = null;
let count = 0;
let resyncs = 0;

function log(text, cls) {
  const line = document.createElement('div');
  line.textContent = `${new Date().toISOString().slice(11, 23)}  ${text}`;
  if (cls) line.className = cls;
  $('log').prepend(line);
}

function start(userId) {
  if (client) client.close();
  count = 0;
  document.querySelectorAll('.uid').forEach((el) => { el.textContent = userId; });
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  client = createRealtimeClient({
    url: `${scheme}//${location.host}/ws`,
    getToken: async () => {
      const response = await fetch(`/demo/token?userId=${encodeURIComponent(userId)}`);
      if (!response.ok) throw new Error(`token endpoint answered ${response.status}`);
      return (await response.json()).token;
    },
  });
  client.onState((state) => {
    $('state').textContent = state;
    $('state').dataset.state = state;
    log(`state: ${state}`);
  });
  client.onResync((info) => {
    resyncs += 1;
    $('resyncs').textContent = String(resyncs);
    log(`resync (${(info && info.reason) || 'reconnected'}): refetch the snapshot`, 'resync');
  });
  client.subscribe((update) => {
    count += 1;
    $('count').textContent = String(count);
    const data = update.data;
    const row = data && typeof data === 'object' && data.row ? data.row : data;
    if (update.table === 'subscription' || update.table === 'usage') {
      $(update.table).textContent = JSON.stringify(row, null, 2);
    }
    log(`update ${update.channel} #${update.seq}: ${JSON.stringify(data).slice(0, 160)}`);
  });
  client.connect();
  window.relayDemo = { client, get count() { return count; }, get resyncs() { return resyncs; } };
}

$('user-form').addEventListener('submit', (event) => {
  event.preventDefault();
  start($('user-id').value.trim() || '42');
});

start(new URLSearchParams(location.search).get('userId') || '42');
