// A page with three components using useWebSocketUpdates, bundled by esbuild for the
// browser test: they must share one WebSocket, count three subscribers, and each receive
// every update. window.hookState exposes what the page saw.
import React, { useState } from 'react';
import { createRoot } from 'react-dom/client';

import { useWebSocketUpdates } from '../src/react.js';

const params = new URLSearchParams(location.search);
const userId = params.get('userId') || '42';
window.hookState = { updates: [0, 0, 0], status: [], sockets: 0 };

const RealWebSocket = window.WebSocket;
window.WebSocket = class CountingWebSocket extends RealWebSocket {
  constructor(...args) {
    super(...args);
    window.hookState.sockets += 1;
  }
};

const options = {
  client: {
    url: `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`,
    getToken: async () => (await (await fetch(`/demo/token?userId=${userId}`)).json()).token,
  },
};

function Widget({ index }) {
  const [last, setLast] = useState('');
  const status = useWebSocketUpdates((update) => {
    window.hookState.updates[index] += 1;
    if (update.table === 'subscription') setLast(JSON.stringify(update.data.row ?? update.data));
  }, options);
  window.hookState.status[index] = status;
  return <p id={`w${index}`}>{String(status.isConnected)} {status.subscriberCount} {last}</p>;
}

createRoot(document.getElementById('root')).render(
  <>
    <Widget index={0} />
    <Widget index={1} />
    <Widget index={2} />
  </>,
);
