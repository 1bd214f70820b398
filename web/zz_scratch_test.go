package web_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/chromedp"
	"github.com/vigil-media/vigil/signaling/vigiltest"
)

func TestScratchDisplay(t *testing.T) {
	srv := vigiltest.Start(t)
	extra := strings.Fields(os.Getenv("XFLAGS"))
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath), chromedp.Headless, chromedp.UserDataDir(t.TempDir()),
		chromedp.NoDefaultBrowserCheck, chromedp.Flag("disable-features", "WebRtcHideLocalIpsWithMdns"),
	}
	for _, f := range append(chromiumFlags(), extra...) {
		name, value, ok := strings.Cut(f, "=")
		if ok {
			opts = append(opts, chromedp.Flag(name, value))
		} else {
			opts = append(opts, chromedp.Flag(name, true))
		}
	}
	allocCtx, c1 := chromedp.NewExecAllocator(context.Background(), opts...)
	defer c1()
	bctx, c2 := chromedp.NewContext(allocCtx)
	defer c2()
	chromedp.Do(bctx)
	ctx, c3 := chromedp.NewContext(bctx)
	defer c3()
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/")); err != nil {
		t.Fatal(err)
	}
	js := `(async () => {
	  window.__log = [];
	  document.addEventListener('visibilitychange', () => window.__log.push('vis:' + document.visibilityState));
	  window.addEventListener('blur', () => window.__log.push('blur'));
	  window.addEventListener('focus', () => window.__log.push('focus'));
	  try {
	    const s = await navigator.mediaDevices.getDisplayMedia(JSON.parse(window.__c || '{"video":true}'));
	    const tr = s.getVideoTracks()[0];
	    return JSON.stringify({ok: true, label: tr.label, settings: tr.getSettings()});
	  } catch (e) { return 'ERR ' + e.name + ': ' + e.message; }
	})()`
	chromedp.Run(ctx, chromedp.Evaluate[bool]("window.__c = " + strconv.Quote(os.Getenv("GDM")) + "; true"))
	res, err := chromedp.Run(ctx, chromedp.Evaluate[string](js, chromedp.EvalAwaitPromise, func(p *runtime.EvaluateParams) { if os.Getenv("NOGEST") == "" { p.UserGesture = ptrb(true) } }))
	t.Logf("display: %s err %v", res, err)
	chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		r, err := chromedp.CallBrowser(ctx, cdpbrowser.GetBrowserCommandLine, cdp.Empty{})
		t.Logf("cmdline %v %v", r, err)
		return nil
	}))
	q := `document.visibilityState + ' focus=' + document.hasFocus() + ' ' + JSON.stringify(window.__log)`
	vis, _ := chromedp.Run(ctx, chromedp.Evaluate[string](q))
	t.Logf("vis before: %s", vis)
	setState := func(st cdpbrowser.WindowState) error {
		return chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			w, err := chromedp.CallBrowser(ctx, cdpbrowser.GetWindowForTarget, cdpbrowser.GetWindowForTargetParams{TargetID: tg.TargetID})
			if err != nil {
				return err
			}
			_, err = chromedp.CallBrowser(ctx, cdpbrowser.SetWindowBounds, cdpbrowser.SetWindowBoundsParams{WindowID: w.WindowID, Bounds: &cdpbrowser.Bounds{WindowState: st}})
			return err
		}))
	}
	t.Logf("minimize err %v", setState(cdpbrowser.WindowStateMinimized))
	time.Sleep(500 * time.Millisecond)
	vis, _ = chromedp.Run(ctx, chromedp.Evaluate[string](q))
	t.Logf("vis after minimize: %s", vis)
	t.Logf("restore err %v", setState(cdpbrowser.WindowStateNormal))
	time.Sleep(500 * time.Millisecond)
	vis, _ = chromedp.Run(ctx, chromedp.Evaluate[string](q))
	t.Logf("vis after restore: %s", vis)
}

func ptrb(b bool) *bool { return &b }
