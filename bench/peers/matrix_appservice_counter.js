// A matrix-appservice 3.0 (Node) appservice whose event handler only counts events.
//
// The peer side of bench/scripts/intake.sh: `node matrix_appservice_counter.js --port P --hs-token T`
// (NODE_PATH pointing at the node_modules the script installed). It prints `pid=... port=...` once
// listening and the number of events handled on SIGTERM.
"use strict";
const { AppService } = require("matrix-appservice");

function arg(name) {
    const i = process.argv.indexOf(name);
    if (i < 0 || i + 1 >= process.argv.length) {
        throw new Error(`missing ${name}`);
    }
    return process.argv[i + 1];
}

const port = Number(arg("--port"));
const appservice = new AppService({ homeserverToken: arg("--hs-token") });
let count = 0;
appservice.on("event", () => {
    count += 1;
});

appservice.listen(port, "127.0.0.1", 511).then(() => {
    console.log(`pid=${process.pid} port=${port} mode=matrix-appservice`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
    process.on(sig, () => {
        console.error(`events handled: ${count}`);
        appservice.close().finally(() => process.exit(0));
    });
}
