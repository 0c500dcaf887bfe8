// Validates Kubernetes objects against the API schemas of the npm package kubernetes-models
// (and @kubernetes-models/prometheus-operator for ServiceMonitor / PrometheusRule).
//   node validate_k8s.mjs NODE_MODULES_DIR < objects.json
// stdin: a JSON array of objects. stdout: a JSON array of {"object": "Kind/name", "error": ...},
// empty when every object is valid. An apiVersion/kind without a model is an error too.
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const objects = JSON.parse(readFileSync(0, "utf8"));
const problems = [];

function modelPath(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group === "monitoring.coreos.com") {
    return join(modules, "@kubernetes-models/prometheus-operator", group, version, `${kind}.js`);
  }
  return join(modules, "kubernetes-models", group, version, `${kind}.js`);
}

for (const object of objects) {
  const name = `${object.kind}/${object.metadata?.name}`;
  const path = modelPath(object.apiVersion ?? "", object.kind ?? "");
  if (!existsSync(path)) {
    problems.push({ object: name, error: `no schema for ${object.apiVersion} ${object.kind}` });
    continue;
  }
  const module = await import(pathToFileURL(path).href);
  const Model = module[object.kind];
  try {
    new Model(object).validate();
  } catch (error) {
    problems.push({ object: name, error: String(error.message ?? error) });
  }
}
process.stdout.write(JSON.stringify(problems));
