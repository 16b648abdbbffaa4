// argocd-lua runs an Argo CD resource health script (health.lua) on one object
// the way Argo CD's application controller does (util/lua in Argo CD), so a test
// can check a health check without an Argo CD installation:
//
//	argocd-lua --script health.lua < object.json
//	{"status":"Healthy","message":"..."}
//
// What it mirrors:
//   - The object is decoded as the API machinery decodes it (whole numbers are
//     int64, others float64) and converted to a Lua table: objects become tables
//     keyed by string, arrays become sequences (nulls dropped), numbers Lua
//     numbers, null nil. It is the global `obj`.
//   - Standard libraries: a script configured in argocd-cm runs with only the
//     base, package and table libraries, and `require("os")` giving os.time and
//     os.date; there is no `string` library and no global `os`. --open-libs is
//     the `resource.customizations.useOpenLibs.<group>_<kind>: true` setting (all
//     of gopher-lua's libraries, as Argo CD's built-in scripts get).
//   - The script may run for 1 second.
//   - The returned table is encoded to JSON and read as {status, message}; a
//     status Argo CD does not know becomes Unknown, "Lua returned an invalid
//     health status"; nil, an empty table or one whose fields are not strings
//     is an empty status.
//
// A script that fails to load or raises an error, or returns something other
// than a table or nil, exits 1 with the error on stderr.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
)

type healthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// The health codes Argo CD accepts from a script (gitops-engine's HealthStatusCode).
var validStatus = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true,
	"Healthy": true, "Degraded": true, "Missing": true,
}

func main() {
	script := flag.String("script", "", "the health.lua to run (required)")
	openLibs := flag.Bool("open-libs", false, "open every standard library (Argo CD's resource.customizations.useOpenLibs)")
	flag.Parse()
	if *script == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: argocd-lua --script health.lua [--open-libs] < object.json")
		os.Exit(2)
	}
	source, err := os.ReadFile(*script)
	if err != nil {
		fail("reading the script: %v", err)
	}
	object, err := readObject(os.Stdin)
	if err != nil {
		fail("%v", err)
	}
	hs, err := runHealth(object, string(source), *openLibs)
	if err != nil {
		fail("%s: %v", *script, err)
	}
	line, err := json.Marshal(hs)
	if err != nil {
		fail("encoding the result: %v", err)
	}
	fmt.Println(string(line))
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "argocd-lua: "+format+"\n", args...)
	os.Exit(1)
}

func readObject(in io.Reader) (map[string]any, error) {
	raw, err := io.ReadAll(in)
	if err != nil {
		return nil, fmt.Errorf("reading stdin: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var object map[string]any
	if err := dec.Decode(&object); err != nil {
		return nil, fmt.Errorf("stdin is not one JSON object: %w", err)
	}
	if object == nil {
		return nil, errors.New("stdin is not one JSON object: it is null")
	}
	if dec.More() {
		return nil, errors.New("stdin has more than one JSON value")
	}
	return object, nil
}

func runHealth(object map[string]any, script string, openLibs bool) (*healthStatus, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, fmt.Errorf("opening the %s library: %w", lib.name, err)
		}
	}
	// Argo CD's "safe" os: os.time and os.date only, reachable through require.
	l.PreloadModule(lua.OsLibName, safeOsLoader)

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, object))

	fn, err := l.LoadString(script)
	if err == nil {
		l.Push(fn)
		err = l.PCall(0, lua.MultRet, nil)
	}
	var apiErr *lua.ApiError
	if errors.As(err, &apiErr) && apiErr.Type == lua.ApiErrorRun {
		apiErr.StackTrace = "" // Argo CD shows the error without the Lua stack trace
	}
	if err != nil {
		return nil, err
	}

	returned := l.Get(-1)
	switch returned.Type() {
	case lua.LTNil:
		return &healthStatus{}, nil
	case lua.LTTable:
	default:
		return nil, fmt.Errorf("expect table output from Lua script, not %s", returned.Type())
	}
	encoded, err := luajson.Encode(returned)
	if err != nil {
		return nil, fmt.Errorf("encoding the returned table: %w", err)
	}
	hs := &healthStatus{}
	if err := json.Unmarshal(encoded, hs); err != nil {
		// An empty table encodes as [], and a field of the wrong type does not
		// fit either: Argo CD reads both as an empty status.
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return &healthStatus{}, nil
		}
		return nil, fmt.Errorf("reading the returned table %s: %w", encoded, err)
	}
	if !validStatus[hs.Status] {
		return &healthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return hs, nil
}

// toLua converts a decoded JSON value to the Lua value Argo CD hands a script.
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		// The API machinery keeps whole numbers int64 and the rest float64;
		// both become Lua numbers.
		if i, err := v.Int64(); err == nil {
			return lua.LNumber(i)
		}
		f, err := v.Float64()
		if err != nil {
			return lua.LNil
		}
		return lua.LNumber(f)
	case []any:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(toLua(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), toLua(l, item))
		}
		return tbl
	}
	return lua.LNil
}

// safeOsLoader gives `require("os")` gopher-lua's os.time and os.date and
// nothing else (no exit, execute, remove, getenv, ...), as Argo CD does.
func safeOsLoader(l *lua.LState) int {
	full := lua.NewState()
	defer full.Close()
	osmod := full.GetGlobal(lua.OsLibName).(*lua.LTable)
	mod := l.NewTable()
	for _, name := range []string{"time", "date"} {
		if fn, ok := osmod.RawGetString(name).(*lua.LFunction); ok && fn.IsG {
			l.SetField(mod, name, l.NewFunction(fn.GFunction))
		}
	}
	l.Push(mod)
	return 1
}
