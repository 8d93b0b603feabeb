// One thread of the threaded build's pool (`pool.js` starts it): instantiates the module
// on the shared memory, says so, then runs rayon's work loop for the life of the page.
onmessage = async ({ data: { glue, module, memory } }) => {
  try {
    const threaded = await import(glue);
    threaded.initSync({ module, memory });
    postMessage({ ready: true });
    threaded.runPoolWorker();
  } catch (e) {
    postMessage({ error: e && e.message ? e.message : String(e) });
  }
};
