// kstatus prints the status that sigs.k8s.io/cli-utils' kstatus computes for one
// Kubernetes object: the library Flux's health checks (and kpt, and
// `kubectl wait`-style tooling built on cli-utils) use to decide that an applied
// object is Current, InProgress or Failed.
//
//	kstatus < object.json          # or object.yaml
//	{"status":"Current","message":"Resource is Ready"}
//
// Input that is not one JSON or YAML object exits 1 with the reason on stderr.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kstatus < object.{json,yaml}  (prints {\"status\":...,\"message\":...})")
		os.Exit(2)
	}
	out, err := compute(os.Stdin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
		os.Exit(1)
	}
	line, err := json.Marshal(out)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: encoding the result: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(string(line))
}

func compute(in io.Reader) (*result, error) {
	raw, err := io.ReadAll(in)
	if err != nil {
		return nil, fmt.Errorf("reading stdin: %w", err)
	}
	// JSON is YAML, so one conversion takes both.
	doc, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("stdin is neither JSON nor YAML: %w", err)
	}
	// apimachinery's decoder keeps whole numbers int64, as the API machinery
	// does; kstatus reads metadata.generation with NestedInt64.
	var obj map[string]interface{}
	if err := utiljson.Unmarshal(doc, &obj); err != nil {
		return nil, fmt.Errorf("stdin is not one Kubernetes object (a JSON or YAML mapping): %w", err)
	}
	if obj == nil {
		return nil, fmt.Errorf("stdin is empty: expected one Kubernetes object")
	}
	u := &unstructured.Unstructured{Object: obj}
	if u.GetKind() == "" || u.GetAPIVersion() == "" {
		return nil, fmt.Errorf("stdin is not a Kubernetes object: it needs apiVersion and kind")
	}
	res, err := status.Compute(u)
	if err != nil {
		return nil, fmt.Errorf("computing the status of %s %s: %w", u.GetKind(), u.GetName(), err)
	}
	return &result{Status: res.Status.String(), Message: res.Message}, nil
}
